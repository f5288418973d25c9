"""polynl-deploy: export Poly-NL models to ONNX, run them on ONNX Runtime and TensorRT, validate numerics."""

__version__ = "0.1.0"
