"""Settings of the inference server, one dataclass."""

import math
from dataclasses import dataclass
from pathlib import Path

from polynl_deploy import defaults
from polynl_deploy.errors import SettingsError
from polynl_deploy.settings import check_model_name

BACKENDS = ("auto", "onnxruntime", "tensorrt")
"""``auto`` picks TensorRT for engine files (``defaults.ENGINE_SUFFIXES``) and ONNX Runtime for the rest."""



@dataclass(frozen=True)
class ServeSettings:
    models: dict[str, Path]
    """Served name -> model file (``.onnx``, or a TensorRT engine: ``.plan``, ``.engine``, ``.trt``)."""
    host: str = defaults.SERVE_HOST
    port: int = defaults.SERVE_PORT
    backend: str = "auto"
    max_batch_size: int = defaults.SERVE_MAX_BATCH_SIZE
    """Above 1, requests are merged along axis 0 into batches of at most this many rows."""
    max_delay_ms: float = defaults.SERVE_MAX_DELAY_MS
    """How long a forming batch waits for more requests."""
    max_queue: int = defaults.SERVE_MAX_QUEUE
    """Requests admitted per model (waiting or running); more are answered 503."""
    max_body_mb: float = defaults.SERVE_MAX_BODY_MB
    """Largest request body; larger ones are answered 413."""
    workers: int = defaults.SERVE_WORKERS
    """Inference threads; also the number of batches one model runs at a time."""
    intra_op_threads: int | None = None
    """ONNX Runtime threads per inference (None: ONNX Runtime's default)."""
    request_timeout_s: float = 60.0
    """A request not answered by then gets 504."""
    drain_timeout_s: float = 30.0
    """On shutdown, how long in-flight requests may take to finish."""
    log_level: str = "info"
    access_log: bool = False

    def __post_init__(self) -> None:
        if not self.models:
            raise SettingsError("serve: no model given")
        for name in self.models:
            check_model_name(name, "serve")
        if self.backend not in BACKENDS:
            raise SettingsError(f"serve: backend must be one of {BACKENDS}, got {self.backend!r}")
        positive = {"max_batch_size": self.max_batch_size, "max_queue": self.max_queue,
                    "max_body_mb": self.max_body_mb, "workers": self.workers,
                    "request_timeout_s": self.request_timeout_s}
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise SettingsError(f"serve: {name} must be a positive number, got {value}")
        for name, value in {"max_delay_ms": self.max_delay_ms, "drain_timeout_s": self.drain_timeout_s}.items():
            if not (math.isfinite(value) and value >= 0):
                raise SettingsError(f"serve: {name} must be a number >= 0, got {value}")
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"serve: port must be in 0..65535, got {self.port}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


def parse_model_args(values: list[str]) -> dict[str, Path]:
    """``NAME=PATH`` or ``PATH`` (served under the file's stem) -> {name: path}."""
    models: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = Path(value).stem, value
        if name in models:
            raise SettingsError(f"serve: model name {name!r} given twice; use NAME=PATH to rename one")
        models[name] = Path(path)
    return models
