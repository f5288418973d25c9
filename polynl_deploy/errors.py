"""One exception family: every error the toolkit raises on purpose is a PolyNLError."""


class PolyNLError(Exception):
    """Base class of all polynl-deploy errors; the CLI turns it into a message and exit code 2."""


class ModelFileError(PolyNLError):
    """An ONNX/engine file is missing, truncated or not what it claims to be."""


class CheckpointError(PolyNLError):
    """A checkpoint cannot be read safely or does not match the model."""


class SourceError(PolyNLError):
    """A model SOURCE (``package.module:factory`` or zoo name) cannot be resolved."""


class ExportError(PolyNLError):
    """torch.onnx could not export the model, or the result failed its checks."""


class SettingsError(PolyNLError):
    """A job was asked for with impossible settings (a negative seed or tolerance, an unknown output)."""


class InputError(PolyNLError):
    """An inference input has the wrong name, shape or dtype."""


class InferenceError(PolyNLError):
    """A backend failed to run an inference on inputs that passed the name/dtype/shape checks."""

    def __init__(self, message: str, backend: str = "") -> None:
        super().__init__(message)
        self.backend = backend


class ValidationError(PolyNLError):
    """A numerics check failed (outputs differ beyond tolerance, NaN/Inf, label mismatch)."""


class BackendUnavailableError(PolyNLError):
    """A backend (TensorRT, CUDA, plugin library) is not present on this machine."""


class SurgeryError(PolyNLError):
    """A graph pass could not rewrite the model, or its result fails the ONNX checker."""


class BuildSettingsError(PolyNLError):
    """An engine build was asked for with inconsistent settings."""


class EngineBuildError(PolyNLError):
    """TensorRT parsed the model but could not build an engine from it."""


class BenchSettingsError(PolyNLError):
    """An impossible benchmark setting (unknown preset or contender, bad size)."""


class OutputPathError(PolyNLError):
    """An output cannot be written there: a directory or file is in the way, no write access, or it is an input."""


class KernelError(PolyNLError):
    """libpolynl_kernels could not be built or loaded, or refused a call; ``status`` is its PolyNLStatus."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
