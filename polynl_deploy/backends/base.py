"""Runner interface shared by every backend: ``infer(feed) -> outputs`` with checked inputs."""

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from polynl_deploy.errors import InferenceError, InputError, PolyNLError

Dim = int | str | None  # int: fixed; str/None: dynamic


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name, e.g. "float32"
    shape: tuple[Dim, ...]

    def check(self, array: np.ndarray, backend: str) -> None:
        if str(array.dtype) != self.dtype:
            raise InputError(f"{backend}: input {self.name!r} expects dtype {self.dtype}, got {array.dtype}")
        if array.ndim != len(self.shape) or any(
                isinstance(want, int) and want != got for want, got in zip(self.shape, array.shape)):
            raise InputError(f"{backend}: input {self.name!r} expects shape {format_shape(self.shape)}, "
                             f"got {tuple(array.shape)}")
        if 0 in array.shape:
            raise InputError(f"{backend}: input {self.name!r} has shape {tuple(array.shape)}: "
                             "every dimension must be at least 1")


def format_shape(shape) -> str:
    return "(" + ", ".join(str(d) if d is not None else "?" for d in shape) + ")"


class Runner(ABC):
    """A loaded backend. ``infer`` checks names, dtypes and shapes before running.

    Subclasses set ``input_specs``, ``output_names`` and ``model_label`` (what runs) when they load.
    """

    name: str
    input_specs: list[TensorSpec]
    output_names: list[str]
    model_label: str = "model"
    precision: str | None = None
    """The numpy dtype of the arithmetic where it is below the I/O types (a float16 engine with float32
    I/O): validate's tolerances follow it."""

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        specs = self.input_specs
        expected = [s.name for s in specs]
        if sorted(feed) != sorted(expected):
            raise InputError(f"{self.name}: expected inputs {expected}, got {sorted(feed)}")
        for spec in specs:
            spec.check(np.asarray(feed[spec.name]), self.name)
        try:
            return self._infer({k: np.ascontiguousarray(v) for k, v in feed.items()})
        except PolyNLError:
            raise
        except Exception as exc:  # each runtime raises its own types (ORT Fail/InvalidArgument, torch RuntimeError)
            shapes = ", ".join(f"{k} {tuple(np.shape(v))}" for k, v in feed.items())
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]
            raise InferenceError(f"{self.name}: {self.model_label} failed on inputs {shapes}: {reason}",
                                 self.name) from exc

    @abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
