"""Settings of each toolkit job, one dataclass each; defaults come from ``defaults``."""

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from polynl_deploy import defaults
from polynl_deploy.errors import SettingsError
from polynl_deploy.io import check_outputs


_MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def check_model_name(name: str, command: str) -> None:
    """A served or repository model name: letters, digits, '_', '.', '-', and not '.' or '..' (which as a
    folder name would point at the repository itself or outside it)."""
    if not _MODEL_NAME.match(name) or not name.strip("."):
        raise SettingsError(f"{command}: model name {name!r} may only use letters, digits, '_', '.', '-', "
                            "and not only dots")


def check_seed(seed: int) -> None:
    if seed < 0:
        raise SettingsError(f"seed must be >= 0, got {seed}")


def check_tolerance(value: float, what: str) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise SettingsError(f"{what} must be a finite number >= 0, got {value}")


def parse_tolerances(values: list[str] | None) -> dict[str, tuple[float, float]]:
    """'OUTPUT:ATOL:RTOL' per value -> {output: (atol, rtol)}; each output at most once."""
    result: dict[str, tuple[float, float]] = {}
    for value in values or []:
        name, sep, rest = value.rpartition(":")
        name, sep2, atol = name.rpartition(":")
        try:
            if not (sep and sep2 and name):
                raise ValueError
            pair = (float(atol), float(rest))
        except ValueError:
            raise SettingsError(f"bad tolerance {value!r}: expected OUTPUT:ATOL:RTOL, e.g. output:1e-4:1e-3") from None
        if name in result:
            raise SettingsError(f"tolerance for output {name!r} given twice")
        result[name] = pair
    return result


@dataclass
class ExportSettings:
    source: str
    output: Path
    checkpoint: Path | None = None
    input_shapes: list[tuple[int, ...]] | None = None
    opset: int = defaults.OPSET
    mode: str = "custom-op"
    dynamic: bool = True

    def __post_init__(self) -> None:
        check_outputs(files=[self.output], inputs=[self.checkpoint])


@dataclass
class ValidateSettings:
    onnx_path: Path
    source: str | None = None
    checkpoint: Path | None = None
    backends: tuple[str, ...] = ("eager", "ort")
    seed: int = defaults.SEED
    atol: float | None = None          # overrides the per-dtype default for every output
    rtol: float | None = None
    per_output: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (atol, rtol)
    report: Path | None = None
    save_inputs: Path | None = None
    load_inputs: Path | None = None
    engine: Path | None = None         # TensorRT plan for backend "trt" (default: ONNX path with .plan)

    def __post_init__(self) -> None:
        check_seed(self.seed)
        for what, value in (("atol", self.atol), ("rtol", self.rtol)):
            if value is not None:
                check_tolerance(value, what)
        for name, (atol, rtol) in self.per_output.items():
            check_tolerance(atol, f"atol of output {name!r}")
            check_tolerance(rtol, f"rtol of output {name!r}")
        if self.engine is not None and "trt" not in self.backends:
            raise SettingsError(f"--engine {self.engine} is only used by backend 'trt', which is not among "
                                f"--backends {','.join(self.backends)}")
        check_outputs(files=[self.report, self.save_inputs],
                      inputs=[self.onnx_path, self.checkpoint, self.load_inputs, self.engine])


@dataclass
class DemoSettings:
    model: str = defaults.DEMO_MODEL
    output_dir: Path = Path(defaults.DEMO_OUTPUT_DIR)
    batch_size: int = defaults.DEMO_BATCH
    samples: int | None = None  # held-out samples to use; None: the whole held-out split

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise SettingsError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.samples is not None and self.samples < 1:
            raise SettingsError(f"samples must be at least 1, got {self.samples}")
