"""polynl-deploy: export Poly-NL models to ONNX, run them on ONNX Runtime and TensorRT, validate numerics.

Heavy modules (torch, onnx, onnxruntime) load on first use of the names below.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "export_onnx": "polynl_deploy.export.exporter",
    "validate": "polynl_deploy.validation",
    "inspect_model": "polynl_deploy.inspection",
    "load_source": "polynl_deploy.sources",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'polynl_deploy' has no attribute {name!r}")
