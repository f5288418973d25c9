"""Settings of each toolkit job, one dataclass each; defaults come from ``defaults``."""

from dataclasses import dataclass, field
from pathlib import Path

from polynl_deploy import defaults


@dataclass
class ExportSettings:
    source: str
    output: Path
    checkpoint: Path | None = None
    input_shapes: list[tuple[int, ...]] | None = None
    opset: int = defaults.OPSET
    mode: str = "custom-op"
    dynamic: bool = True


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


@dataclass
class DemoSettings:
    model: str = defaults.DEMO_MODEL
    output_dir: Path = Path(defaults.DEMO_OUTPUT_DIR)
    batch_size: int = defaults.DEMO_BATCH
    samples: int | None = None  # held-out samples to use; None: the whole held-out split
