"""What a benchmark run measures: the layer grid, the contenders, repeats and budgets, and the presets."""

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from polynl_deploy import contract, defaults
from polynl_deploy.errors import BenchSettingsError

PRESETS = ("quick", "targets", "full", "gpu")
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True, order=True)
class Case:
    """One layer size: X is (B, C, H, W) with H = W = sqrt(N) for maps, (B, N, C) for tokens."""

    layout: str
    batch: int
    channels: int
    positions: int
    reduction: int = 2

    def __post_init__(self) -> None:
        if self.layout not in contract.LAYOUTS:
            raise BenchSettingsError(f"layout must be one of {contract.LAYOUTS}, got {self.layout!r}")
        if self.layout == contract.LAYOUT_MAPS and math.isqrt(self.positions) ** 2 != self.positions:
            raise BenchSettingsError(f"maps need a square number of positions, got N={self.positions}")

    @property
    def inner_channels(self) -> int:
        return self.channels // self.reduction

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.layout == contract.LAYOUT_MAPS:
            side = math.isqrt(self.positions)
            return (self.batch, self.channels, side, side)
        return (self.batch, self.positions, self.channels)

    @property
    def floor_flops(self) -> int:
        """The two GEMMs no exact form avoids: X^T X and X M, 2 N C^2 multiply-adds each per item."""
        return 4 * self.batch * self.positions * self.channels ** 2

    def label(self) -> str:
        size = f"{math.isqrt(self.positions)}²" if self.layout == contract.LAYOUT_MAPS else str(self.positions)
        return f"{self.layout} B={self.batch} C={self.channels} C'={self.inner_channels} N={size}"


@dataclass
class BenchSettings:
    """The sweep grid (maps sides and token lengths x channels x batches) and how each point is timed."""

    preset: str = "custom"
    map_sides: tuple[int, ...] = (32, 64)
    token_lengths: tuple[int, ...] = ()
    channels: tuple[int, ...] = (64, 256)
    batches: tuple[int, ...] = (1,)
    reduction: int = 2
    contenders: tuple[str, ...] | None = None
    """Contender names to run (see ``polynl_deploy.bench.contenders.CONTENDERS``); None runs all that
    support ``device``."""
    device: str = "cpu"
    """cpu, or cuda: the eager, compiled and floor contenders run on the GPU, beside the fused kernel."""
    dtype: str = "float32"
    """Type of X and the modules on cuda (float32, float16, bfloat16); CPU runs are float32."""
    repeats: int = 10
    warmup: int = 2
    measurement_budget_s: float = 5.0
    """Repeats stop early (after at least 3) once one measurement has used this much time."""
    rounds: int = 1
    """Each case's contenders are timed this many times in turn, ``repeats`` calls each time. A
    measurement's ``best_round_ms`` (its fastest round's median) is what fits and targets use: on a
    shared host a slow phase lasting seconds then costs one contender one round, not its figure."""
    nonlocal_memory_cap_gib: float = 4.0
    """NonLocal2d is skipped where its B x N x N fp32 pairwise matrix would exceed this."""
    nonlocal_time_budget_s: float = 20.0
    """NonLocal2d is skipped where one call is predicted (from smaller N, as N^2) to take longer."""
    compile_budget_s: float = 120.0
    """torch.compile is dropped for the rest of the run once one compilation takes longer."""
    threads: int | None = None
    """Threads for torch and ONNX Runtime (intra-op); None keeps torch.get_num_threads()."""
    models: tuple[str, ...] = ()
    """Zoo models (polynl_models.registry) to time end to end, eager vs ONNX Runtime."""
    model_batch: int = 1
    target: Case | None = Case(contract.LAYOUT_MAPS, 1, 256, 128 * 128)
    """The size the targets table is evaluated at."""
    output_dir: Path = Path("benchmarks/results")
    plots: bool = True
    progress: bool = True
    seed: int = defaults.SEED

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        if self.repeats < 1 or self.warmup < 0 or self.rounds < 1:
            raise BenchSettingsError(f"need repeats >= 1, warmup >= 0 and rounds >= 1, got {self.repeats}, "
                                     f"{self.warmup}, {self.rounds}")
        if self.device not in DEVICES or self.dtype not in DTYPES:
            raise BenchSettingsError(f"device must be one of {DEVICES} and dtype one of {DTYPES}, "
                                     f"got {self.device!r}, {self.dtype!r}")
        if self.device == "cpu" and self.dtype != "float32":
            raise BenchSettingsError(f"CPU runs are float32 (ONNX Runtime CPU has no fast {self.dtype}); "
                                     "use device='cuda' for reduced precision")
        most = 4 * (os.cpu_count() or 1)
        if self.threads is not None and not 1 <= self.threads <= most:
            raise BenchSettingsError(f"threads must be in 1..{most} (4x this machine's {os.cpu_count()} CPUs), "
                                     f"got {self.threads}")
        if not self.nonlocal_memory_cap_gib > 0:
            raise BenchSettingsError(f"nonlocal_memory_cap_gib must be positive, got {self.nonlocal_memory_cap_gib}")
        if not self.models and not self.cases():
            raise BenchSettingsError("nothing to measure: no layer sizes (--no-layers) and no zoo models "
                                     "(--no-models)")

    def cases(self) -> list[Case]:
        """Every grid point, sorted so that each (layout, batch, channels) group runs in increasing N."""
        positions = {contract.LAYOUT_MAPS: [s * s for s in self.map_sides],
                     contract.LAYOUT_TOKENS: list(self.token_lengths)}
        return sorted(Case(layout, batch, channels, n, self.reduction)
                      for layout, sizes in positions.items() for n in sizes
                      for batch in self.batches for channels in self.channels)

    @classmethod
    def preset_named(cls, name: str, **overrides) -> "BenchSettings":
        """``quick`` (a couple of minutes on 2 cores), ``targets`` (C=256, C'=128, up to N=128², batch 1),
        ``full`` (N 32² to 256² and tokens, C 64 to 1024, batch 1 and 8, every zoo model) or ``gpu``
        (float16 on CUDA: N 64² to 256², C 64 to 512, batch 1 and 8, with the fused kernel)."""
        presets = {
            "quick": cls(preset="quick", map_sides=(32, 48, 64), token_lengths=(256, 1024), channels=(64, 256),
                         repeats=7, measurement_budget_s=2.0, nonlocal_time_budget_s=5.0,
                         models=("polynl-resnet-small", "polynl-tokens-small", "polynl-marks-small"),
                         target=Case(contract.LAYOUT_MAPS, 1, 256, 64 * 64)),
            # The exponents need several N: the target size is the largest of four, all at C=256, batch 1.
            "targets": cls(preset="targets", map_sides=(32, 64, 96, 128), channels=(256,), repeats=15, rounds=3,
                           measurement_budget_s=8.0, nonlocal_time_budget_s=30.0),
            "full": cls(preset="full", map_sides=(32, 64, 128, 256), token_lengths=(256, 1024, 4096, 16384),
                        channels=(64, 256, 1024), batches=(1, 8), models=tuple(_zoo_names())),
            "gpu": cls(preset="gpu", device="cuda", dtype="float16", map_sides=(64, 128, 256),
                       token_lengths=(4096, 16384), channels=(64, 128, 256, 512), batches=(1, 8), repeats=50,
                       warmup=5, measurement_budget_s=2.0, nonlocal_memory_cap_gib=16.0, nonlocal_time_budget_s=2.0),
        }
        if name not in presets:
            raise BenchSettingsError(f"preset must be one of {PRESETS}, got {name!r}")
        return replace(presets[name], **overrides)


def _zoo_names() -> list[str]:
    try:
        from polynl_models.registry import list_models
    except ImportError:
        return []
    return list_models()


@dataclass
class Measurement:
    """One contender at one case; timings in milliseconds. ``status`` is ok, skipped or failed."""

    contender: str
    family: str
    runtime: str
    layout: str
    batch: int
    channels: int
    inner_channels: int
    positions: int
    status: str
    reason: str = ""
    median_ms: float | None = None
    q1_ms: float | None = None
    q3_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    repeats: int = 0
    """Timed calls over all rounds; median, quartiles, min and max are over all of them."""
    rounds: int = 0
    best_round_ms: float | None = None
    """The fastest round's median: the figure fits and targets use."""
    worst_round_ms: float | None = None
    prepare_s: float | None = None
    peak_memory_mib: float | None = None
    floor_gflop: float = 0.0
    gflops_vs_floor: float | None = None
    """Floor FLOPs / ``latency_ms``: how close the contender runs to the floor's work rate."""
    max_abs_error: float | None = None
    error_reference: str = ""
    device: str = "cpu"
    dtype: str = "float32"

    @property
    def case(self) -> Case:
        return Case(self.layout, self.batch, self.channels, self.positions, self.channels // self.inner_channels)

    @property
    def latency_ms(self) -> float | None:
        """The latency fits and targets use: the best round's median (the median with one round)."""
        return self.best_round_ms if self.best_round_ms is not None else self.median_ms


def failure_reason(exc: Exception) -> str:
    """The one-line reason a failed measurement carries: the exception type and its first line."""
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


MEASUREMENT_COLUMNS = tuple(f.name for f in Measurement.__dataclass_fields__.values())


@dataclass
class ModelTiming:
    """One backend on one zoo model: median and IQR in ms, speed-up over eager, max |diff| from eager."""

    status: str
    reason: str = ""
    median_ms: float | None = None
    iqr_ms: float | None = None
    eager_over: float | None = None
    max_abs_error: float | None = None


@dataclass
class ModelMeasurement:
    """A zoo model end to end on ``device``: each backend that ran, by name (eager first)."""

    model: str
    batch: int
    input_shape: tuple[int, ...]
    device: str
    status: str
    reason: str = ""
    backends: dict[str, ModelTiming] = field(default_factory=dict)


@dataclass
class ScalingFit:
    """log(latency) = intercept + exponent * log(N), least squares over one group's measured points."""

    contender: str
    layout: str
    batch: int
    channels: int
    exponent: float
    intercept: float
    points: int
    min_positions: int
    max_positions: int


@dataclass
class TargetCheck:
    key: str
    description: str
    value: float | None
    goal: str
    met: bool | None
    basis: str
    """measured, extrapolated (how), or why it could not be evaluated."""


@dataclass
class BenchResult:
    settings: BenchSettings
    machine: dict
    measurements: list[Measurement] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    """Contenders absent on this machine -> the one-line reason."""
    fits: list[ScalingFit] = field(default_factory=list)
    targets: list[TargetCheck] = field(default_factory=list)
    target_case: Case | None = None
    models: list[ModelMeasurement] = field(default_factory=list)
    models_note: str = ""
    files: dict[str, Path] = field(default_factory=dict)

    def ok(self, contender: str, case: Case) -> Measurement | None:
        """The successful measurement of ``contender`` at ``case``, if any."""
        return next((m for m in self.measurements
                     if m.contender == contender and m.status == "ok" and m.case == case), None)
