"""Optimization profiles (min/opt/max shape per input) from the ONNX dynamic axes and the export's
example shapes: min 1, opt = the example, max = ``max_scale`` x the example on every dynamic axis."""

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

from polynl_deploy.backends.base import Dim, TensorSpec, format_shape
from polynl_deploy.tensorrt.settings import DEFAULT_MAX_SCALE, BuildSettingsError, Shape, ShapeOverride


@dataclass(frozen=True)
class Profile:
    """Shapes one engine input accepts: any shape between ``min`` and ``max``, tuned for ``opt``."""
    input: str
    min: Shape
    opt: Shape
    max: Shape

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def is_dynamic(dim: Dim) -> bool:
    return not isinstance(dim, int) or dim <= 0


def derive_profile(spec: TensorSpec, example: Sequence[int], *, max_scale: float = DEFAULT_MAX_SCALE,
                   override: ShapeOverride | None = None) -> Profile:
    """Default shapes for one input, then the user's ``override``, checked against the ONNX dims."""
    if len(example) != len(spec.shape):
        raise BuildSettingsError(f"input {spec.name!r}: example shape {tuple(example)} does not match "
                                 f"the ONNX rank {format_shape(spec.shape)}")
    fixed = [None if is_dynamic(d) else d for d in spec.shape]
    shapes = {
        "min": tuple(f if f else 1 for f in fixed),
        "opt": tuple(f if f else e for f, e in zip(fixed, example)),
        "max": tuple(f if f else max(e, math.ceil(e * max_scale)) for f, e in zip(fixed, example)),
    }
    for key in shapes:
        given = getattr(override, key, None) if override else None
        if given is None:
            continue
        given = tuple(given)
        if len(given) != len(fixed) or any(f and f != g for f, g in zip(fixed, given)):
            raise BuildSettingsError(f"input {spec.name!r}: --{key} {format_shape(given)} does not fit the "
                                     f"ONNX shape {format_shape(spec.shape)} (fixed dims must match)")
        shapes[key] = given
    _stretch_defaults(shapes, override)
    profile = Profile(spec.name, shapes["min"], shapes["opt"], shapes["max"])
    check_profile(profile)
    return profile


def _stretch_defaults(shapes: dict[str, Shape], override: ShapeOverride | None) -> None:
    """Widen derived (not user-given) bounds so that a user's opt/max/min stays inside them."""
    given = {k for k in shapes if override is not None and getattr(override, k) is not None}
    if "opt" in given:
        if "max" not in given:
            shapes["max"] = tuple(max(m, o) for m, o in zip(shapes["max"], shapes["opt"]))
        if "min" not in given:
            shapes["min"] = tuple(min(m, o) for m, o in zip(shapes["min"], shapes["opt"]))
    if "max" in given and "opt" not in given:
        shapes["opt"] = tuple(min(o, m) for o, m in zip(shapes["opt"], shapes["max"]))
    if "min" in given and "opt" not in given:
        shapes["opt"] = tuple(max(o, m) for o, m in zip(shapes["opt"], shapes["min"]))
        if "max" not in given:
            shapes["max"] = tuple(max(x, m) for x, m in zip(shapes["max"], shapes["min"]))


def check_profile(profile: Profile) -> None:
    if any(d < 1 for d in profile.min):
        raise BuildSettingsError(f"input {profile.input!r}: min {format_shape(profile.min)} has a dim below 1")
    if not all(lo <= mid <= hi for lo, mid, hi in zip(profile.min, profile.opt, profile.max)):
        raise BuildSettingsError(
            f"input {profile.input!r}: need min <= opt <= max on every axis, got min {format_shape(profile.min)}, "
            f"opt {format_shape(profile.opt)}, max {format_shape(profile.max)}")


def _name_the_unnamed(specs: Sequence[TensorSpec], overrides: dict[str, ShapeOverride]) -> dict[str, ShapeOverride]:
    if "" not in overrides:
        return overrides
    if len(specs) != 1:
        raise BuildSettingsError(f"the model has inputs {[s.name for s in specs]}: write shapes as INPUT:1x3x64x64")
    unnamed = overrides.pop("")
    named = overrides.get(specs[0].name, ShapeOverride())
    merged = {}
    for key in ("min", "opt", "max"):
        given = [value for value in (getattr(unnamed, key), getattr(named, key)) if value is not None]
        if len(given) > 1:
            raise BuildSettingsError(f"--{key} given twice for input {specs[0].name!r}")
        merged[key] = given[0] if given else None
    return {**overrides, specs[0].name: ShapeOverride(**merged)}


def derive_profiles(specs: Sequence[TensorSpec], example_shapes: Sequence[Sequence[int]], *,
                    max_scale: float = DEFAULT_MAX_SCALE,
                    overrides: Mapping[str, ShapeOverride] | None = None) -> list[Profile]:
    """One profile per input (fixed inputs get min = opt = max). An override named "" (a shape given
    without INPUT:) belongs to the model's only input."""
    overrides = _name_the_unnamed(specs, dict(overrides or {}))
    unknown = sorted(set(overrides) - {s.name for s in specs})
    if unknown:
        raise BuildSettingsError(f"shape overrides for unknown inputs {unknown}; "
                                 f"the model's inputs are {[s.name for s in specs]}")
    return [derive_profile(spec, example, max_scale=max_scale, override=overrides.get(spec.name))
            for spec, example in zip(specs, example_shapes)]


def profiles_for_onnx(onnx_path, *, max_scale: float = DEFAULT_MAX_SCALE,
                      overrides: Mapping[str, ShapeOverride] | None = None) -> list[Profile]:
    """Profiles for an exported file: its dynamic input dims and ``polynl_deploy.example_shapes``."""
    from polynl_deploy.validation import model_input_specs

    specs, _, examples = model_input_specs(onnx_path)
    return derive_profiles(specs, examples, max_scale=max_scale, overrides=overrides)
