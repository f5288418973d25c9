"""ONNX Runtime backend: loader (session from an ONNX file) and runner."""

from pathlib import Path

import numpy as np

from polynl_deploy import features
from polynl_deploy.backends.base import Runner, TensorSpec
from polynl_deploy.errors import ModelFileError
from polynl_deploy.onnx_file import load_onnx

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool",
              "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


def default_providers() -> list[str]:
    """CUDA first when onnxruntime-gpu and a GPU are both present, CPU always."""
    return (["CUDAExecutionProvider"] if features.detect().ort_cuda else []) + ["CPUExecutionProvider"]


def session_from_onnx(path, providers: list[str] | None = None, threads: int | None = None):
    """Loader: an InferenceSession for ``path`` (validated as ONNX first for clear errors)."""
    import onnxruntime as ort

    load_onnx(path)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(Path(path)), options, providers=providers or default_providers())
    except Exception as exc:  # onnxruntime raises its own exception types per failure
        raise ModelFileError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc


class OnnxRuntimeRunner(Runner):
    name = "ort"

    def __init__(self, path, providers: list[str] | None = None, threads: int | None = None) -> None:
        self.path = Path(path)
        self.model_label = str(self.path)
        self.session = session_from_onnx(path, providers, threads)
        self.input_specs = [
            TensorSpec(i.name, _ORT_TYPES.get(i.type, i.type), tuple(i.shape))
            for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, feed)))
