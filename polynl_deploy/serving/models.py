"""Served models: a runner per model file (ONNX Runtime, or TensorRT for engines) and its v2 metadata."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from polynl_deploy.backends.base import Runner, TensorSpec
from polynl_deploy.defaults import ENGINE_SUFFIXES
from polynl_deploy.serving.protocol import ProtocolError, v2_datatype
from polynl_deploy.serving.settings import ServeSettings

MODEL_VERSION = "1"
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}


def backend_for(path: Path, backend: str) -> str:
    """``auto``: TensorRT for engine files (``defaults.ENGINE_SUFFIXES``), ONNX Runtime otherwise."""
    if backend != "auto":
        return backend
    return "tensorrt" if path.suffix.lower() in ENGINE_SUFFIXES else "onnxruntime"


def load_runner(path: Path, backend: str, intra_op_threads: int | None = None) -> Runner:
    if backend == "tensorrt":
        from polynl_deploy.tensorrt.runner import TensorRTRunner  # TensorRT itself is imported (or refused) there
        return TensorRTRunner(path)
    from polynl_deploy.backends.onnxruntime_backend import OnnxRuntimeRunner
    return OnnxRuntimeRunner(path, threads=intra_op_threads)


def _output_specs(runner: Runner) -> list[TensorSpec]:
    """Output specs from the runner's ``output_specs``, else its ONNX Runtime session; a runner with
    neither gets the first input's dtype and a dynamic shape of unknown rank (reported as [-1])."""
    specs = getattr(runner, "output_specs", None)
    if specs is not None:
        return list(specs)
    session = getattr(runner, "session", None)
    if session is not None:
        from polynl_deploy.backends.onnxruntime_backend import _ORT_TYPES
        return [TensorSpec(o.name, _ORT_TYPES.get(o.type, o.type), tuple(o.shape)) for o in session.get_outputs()]
    return [TensorSpec(name, runner.input_specs[0].dtype, (None,)) for name in runner.output_names]


def _profile_ranges(runner: Runner) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Per input, the (min, max) shapes of a TensorRT engine's first optimization profile; {} otherwise."""
    engine = getattr(runner, "engine", None)
    if engine is None:
        return {}
    ranges = {}
    for spec in runner.input_specs:
        low, _optimum, high = engine.get_tensor_profile_shape(spec.name, 0)
        ranges[spec.name] = (tuple(low), tuple(high))
    return ranges


def _v2_shape(shape) -> list[int]:
    return [dim if isinstance(dim, int) else -1 for dim in shape]


@dataclass
class ServedModel:
    name: str
    path: Path
    backend: str
    runner: Runner
    outputs: list[TensorSpec]
    ranges: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    """Per input, the smallest and largest shape the model accepts, where it has such limits."""

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.runner.input_specs

    @property
    def thread_safe(self) -> bool:
        """ONNX Runtime sessions run concurrently; a TensorRT execution context runs one batch at a time."""
        return self.backend == "onnxruntime"

    @property
    def max_rows(self) -> int | None:
        """The largest axis-0 size the model accepts, where it has a limit."""
        return min((high[0] for _low, high in self.ranges.values() if high), default=None)

    @property
    def batchable(self) -> bool:
        """Requests can be merged along axis 0: every input and output has a dynamic first axis."""
        return all(spec.shape and not isinstance(spec.shape[0], int) for spec in [*self.inputs, *self.outputs])

    def metadata(self) -> dict:
        def describe(spec: TensorSpec) -> dict:
            return {"name": spec.name, "datatype": v2_datatype(spec.dtype), "shape": _v2_shape(spec.shape)}
        return {"name": self.name, "versions": [MODEL_VERSION], "platform": PLATFORMS[self.backend],
                "inputs": [describe(s) for s in self.inputs], "outputs": [describe(s) for s in self.outputs]}

    def check_inputs(self, feed: dict[str, np.ndarray]) -> None:
        """Names, datatypes and shapes against the model, with v2 names in the messages."""
        expected = [spec.name for spec in self.inputs]
        if sorted(feed) != sorted(expected):
            raise ProtocolError(f"model {self.name!r} expects inputs {expected}, got {sorted(feed)}")
        for spec in self.inputs:
            array = feed[spec.name]
            if str(array.dtype) != spec.dtype:
                raise ProtocolError(f"input {spec.name!r} of model {self.name!r} expects datatype "
                                    f"{v2_datatype(spec.dtype)}, got {v2_datatype(str(array.dtype))}")
            if array.ndim != len(spec.shape) or any(
                    got < 1 or (isinstance(want, int) and want != got) for want, got in zip(spec.shape, array.shape)):
                raise ProtocolError(f"input {spec.name!r} of model {self.name!r} expects shape "
                                    f"{_v2_shape(spec.shape)} (-1: any size >= 1), got {list(array.shape)}")
            low, high = self.ranges.get(spec.name, (None, None))
            if low is not None and not all(a <= got <= b for a, got, b in zip(low, array.shape, high)):
                raise ProtocolError(f"input {spec.name!r} of model {self.name!r} accepts shapes from {list(low)} "
                                    f"to {list(high)}, got {list(array.shape)}")

    def check_outputs(self, names: list[str] | None) -> None:
        known = [spec.name for spec in self.outputs]
        unknown = [name for name in names or [] if name not in known]
        if unknown:
            raise ProtocolError(f"model {self.name!r} has no output(s) {unknown}; its outputs are {known}")


def load_models(settings: ServeSettings) -> dict[str, ServedModel]:
    """Load every model of ``settings``; raises PolyNLError naming the file that fails."""
    models = {}
    for name, path in settings.models.items():
        path = Path(path)
        backend = backend_for(path, settings.backend)
        runner = load_runner(path, backend, settings.intra_op_threads)
        models[name] = ServedModel(name, path, backend, runner, _output_specs(runner), _profile_ranges(runner))
    return models
