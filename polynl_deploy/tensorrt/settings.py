"""BuildSettings: everything one engine build needs, checked before TensorRT is touched."""

import math
from dataclasses import dataclass, field
from pathlib import Path

from polynl_deploy.errors import BuildSettingsError
from polynl_deploy.io import check_outputs

TARGETS = ("trt", "rtx")
"""trt: full TensorRT with the PolyNL plugin, built on the GPU it runs on.
rtx: TensorRT for RTX, plugin-free graph, built ahead of time for the listed SMs (no GPU needed)."""
PRECISIONS = ("fp32", "fp16", "bf16")
RTX_SMS = (75, 80, 86, 89, 120, 121)
"""Compute capabilities TensorRT for RTX 1.7 can target (``trt.ComputeCapability.SM<n>``); no SM90."""
DEFAULT_MAX_SCALE = 2
"""Default profile max: this multiple of the export's example size on every dynamic axis."""

Shape = tuple[int, ...]


@dataclass
class ShapeOverride:
    """Profile shapes given by the user for one input; unset ones keep their derived defaults."""
    min: Shape | None = None
    opt: Shape | None = None
    max: Shape | None = None


_MAX_DIM = 2 ** 31 - 1
_MAX_VOLUME = 2 ** 40  # TensorRT's limit on a tensor's element count


def parse_shape_overrides(mins=None, opts=None, maxs=None) -> dict[str, ShapeOverride]:
    """'[INPUT:]1x3x64x64' per value -> {input: ShapeOverride}; '' names the model's only input."""
    from polynl_deploy.errors import SourceError
    from polynl_deploy.sources import parse_shape

    overrides: dict[str, ShapeOverride] = {}
    for key, values in (("min", mins), ("opt", opts), ("max", maxs)):
        for value in values or []:
            name, _, text = value.rpartition(":")
            try:
                shape = parse_shape(text)
            except SourceError:
                raise BuildSettingsError(f"bad --{key} {value!r}: expected [INPUT:]SHAPE like x:1x3x64x64") from None
            if max(shape) > _MAX_DIM or math.prod(shape) > _MAX_VOLUME:
                raise BuildSettingsError(f"--{key} {value!r}: TensorRT takes dims up to {_MAX_DIM} and "
                                         f"{_MAX_VOLUME:,} elements a tensor")
            override = overrides.setdefault(name, ShapeOverride())
            if getattr(override, key) is not None:
                raise BuildSettingsError(f"--{key} given twice for " + (f"input {name!r}" if name else "the input"))
            setattr(override, key, shape)
    return overrides


@dataclass
class BuildSettings:
    onnx_path: Path
    plan_path: Path
    target: str = "trt"
    precision: str = "fp32"
    keep_io_fp32: bool = False
    tf32: bool = False                 # let float32 convolutions/GEMMs round inputs to TF32 (TensorRT's default)
    shape_overrides: dict[str, ShapeOverride] = field(default_factory=dict)
    max_scale: float = DEFAULT_MAX_SCALE
    timing_cache: Path | None = None   # read if present, written after the build (full TensorRT only)
    workspace_bytes: int | None = None
    sms: tuple[int, ...] = (89,)       # rtx only
    plugin_library: Path | None = None  # trt only; defaults to features.detect().plugin_library
    version_compatible: bool = False   # trt only: runs on later TensorRT versions; the plugin library goes in the plan
    exclude_lean_runtime: bool = False  # with version_compatible: no lean runtime copy in the plan
    show_progress: bool = True

    def __post_init__(self) -> None:
        self.onnx_path, self.plan_path = Path(self.onnx_path), Path(self.plan_path)
        self.timing_cache = Path(self.timing_cache) if self.timing_cache else None
        self.plugin_library = Path(self.plugin_library) if self.plugin_library else None
        self.sms = tuple(int(sm) for sm in self.sms)
        self.check()

    def check(self) -> None:
        if self.target not in TARGETS:
            raise BuildSettingsError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.precision not in PRECISIONS:
            raise BuildSettingsError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.keep_io_fp32 and self.precision == "fp32":
            raise BuildSettingsError("keep_io_fp32 only applies to fp16/bf16 builds")
        if self.max_scale < 1:
            raise BuildSettingsError(f"max_scale must be >= 1, got {self.max_scale}")
        if self.workspace_bytes is not None and not 0 < self.workspace_bytes < 2 ** 63:
            raise BuildSettingsError(f"workspace must be positive and below 2^63 bytes, got {self.workspace_bytes}")
        if self.target == "rtx":
            unknown = [sm for sm in self.sms if sm not in RTX_SMS]
            if not self.sms or unknown:
                raise BuildSettingsError(f"TensorRT for RTX targets SMs {list(RTX_SMS)}; got {list(self.sms)}")
            if self.plugin_library is not None:
                raise BuildSettingsError("target rtx builds plugin-free graphs; --plugin applies to target trt")
            if self.timing_cache is not None:
                raise BuildSettingsError("target rtx keeps no timing cache; --timing-cache applies to target trt")
            if len(set(self.sms)) != len(self.sms):
                raise BuildSettingsError(f"SM given more than once: {list(self.sms)}")
            if self.version_compatible:
                raise BuildSettingsError("TensorRT for RTX engines are tied to the release that built them; "
                                         "--version-compatible applies to target trt")
        if self.exclude_lean_runtime and not self.version_compatible:
            raise BuildSettingsError("--exclude-lean-runtime only applies to --version-compatible builds")
        check_outputs(files=[self.plan_path, self.sidecar_path, self.timing_cache],
                      inputs=[self.onnx_path, self.plugin_library])

    @property
    def sidecar_path(self) -> Path:
        """``model.plan`` -> ``model.plan.json``: how the engine was built."""
        return self.plan_path.parent / (self.plan_path.name + ".json")  # with_name refuses '' (plan path '.')
