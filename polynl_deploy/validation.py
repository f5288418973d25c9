"""Numerics validation: the same seeded inputs through several backends, compared per output."""

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from polynl_deploy import defaults
from polynl_deploy.backends.base import Runner, TensorSpec
from polynl_deploy.errors import InputError, SettingsError, ValidationError
from polynl_deploy.io import atomic_path, require_file, write_bytes_atomic
from polynl_deploy.onnx_file import load_onnx, metadata

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


@dataclass
class Tolerances:
    """Per-dtype defaults with per-output overrides: ``Tolerances(per_output={"logits": Tolerance(1e-4, 1e-3)})``."""
    per_dtype: dict[str, Tolerance] = field(
        default_factory=lambda: {k: Tolerance(**v) for k, v in defaults.TOLERANCES.items()})
    per_output: dict[str, Tolerance] = field(default_factory=dict)

    def for_output(self, name: str, dtype: str) -> Tolerance:
        if name in self.per_output:
            return self.per_output[name]
        return self.per_dtype.get(dtype, self.per_dtype["float32"])


@dataclass
class OutputComparison:
    backend: str
    input_set: int
    output: str
    dtype: str
    shape: list[int]
    atol: float
    rtol: float
    max_abs_error: float
    max_rel_error: float
    min_atol_to_pass: float   # the smallest atol that passes with the given rtol
    min_rtol_to_pass: float   # the smallest rtol that passes with the given atol
    nan_or_inf: bool
    passed: bool


@dataclass
class ValidationReport:
    model: str
    reference: str
    backends: list[str]
    shapes: list[dict[str, list[int]]]
    comparisons: list[OutputComparison]
    extra_checks: dict[str, dict] = field(default_factory=dict)
    feeds: list[Feed] = field(default_factory=list, repr=False)  # the inputs used; not in the JSON
    outputs: dict[str, list[Feed]] = field(default_factory=dict, repr=False)  # per backend, per feed

    @property
    def passed(self) -> bool:
        return (bool(self.comparisons) and all(c.passed for c in self.comparisons)
                and all(check.get("passed", False) for check in self.extra_checks.values()))

    def to_json(self) -> str:
        payload = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("feeds", "outputs")}
        payload["comparisons"] = [asdict(c) for c in self.comparisons]
        payload["passed"] = self.passed
        return json.dumps(payload, indent=2, allow_nan=True)

    def save(self, path) -> None:
        write_bytes_atomic(path, self.to_json().encode())

    def raise_for_failure(self) -> None:
        if not self.passed:
            failed = [f"{c.backend}/{c.output}#{c.input_set} (max abs {c.max_abs_error:.3g})"
                      for c in self.comparisons if not c.passed]
            failed += [name for name, check in self.extra_checks.items() if not check.get("passed", False)]
            raise ValidationError(f"{self.model}: validation failed: {', '.join(failed) or 'nothing compared'}")


def compare(reference: np.ndarray, actual: np.ndarray, tol: Tolerance) -> dict:
    """Element-wise |actual - reference| <= atol + rtol * |reference|, plus error statistics."""
    ref = reference.astype(np.float64)
    act = actual.astype(np.float64)
    if ref.shape != act.shape:
        return {"max_abs_error": math.inf, "max_rel_error": math.inf, "min_atol_to_pass": math.inf,
                "min_rtol_to_pass": math.inf, "nan_or_inf": False, "passed": False}
    nonfinite = bool(not np.isfinite(act).all() or not np.isfinite(ref).all())
    diff = np.abs(act - ref)
    mag = np.abs(ref)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(mag > 0, diff / mag, np.where(diff > 0, np.inf, 0.0))
        min_rtol = np.where(mag > 0, (diff - tol.atol) / mag, np.where(diff > tol.atol, np.inf, 0.0))
    max_or_zero = lambda a: float(a.max()) if a.size else 0.0  # noqa: E731
    passed = not nonfinite and bool(np.all(diff <= tol.atol + tol.rtol * mag))
    return {
        "max_abs_error": max_or_zero(diff),
        "max_rel_error": max_or_zero(rel),
        "min_atol_to_pass": max(0.0, max_or_zero(diff - tol.rtol * mag)),
        "min_rtol_to_pass": max(0.0, max_or_zero(min_rtol)),
        "nan_or_inf": nonfinite,
        "passed": passed,
    }


def validation_shapes(specs: Sequence[TensorSpec], example_shapes: Sequence[Sequence[int]],
                      scales: Sequence[float] = defaults.VALIDATION_SHAPE_SCALES) -> list[dict[str, list[int]]]:
    """The example shape, then its dynamic axes rescaled (at least 1): one shape set per scale."""
    sets = []
    for scale in scales:
        shapes = {}
        for spec, example in zip(specs, example_shapes):
            shapes[spec.name] = [d if isinstance(d, int) else max(1, round(e * scale))
                                 for d, e in zip(spec.shape, example)]
        if shapes not in sets:
            sets.append(shapes)
    return sets


def random_feed(specs: Sequence[TensorSpec], shapes: dict[str, list[int]], rng: np.random.Generator) -> Feed:
    feed = {}
    for spec in specs:
        shape = shapes[spec.name]
        if np.issubdtype(np.dtype(spec.dtype), np.floating):
            feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feed[spec.name] = rng.integers(0, 4, size=shape).astype(spec.dtype)
    return feed


def save_inputs(path, feeds: Sequence[Feed]) -> None:
    """Store feeds in one .npz (keys ``<set>/<input>``), for --load-inputs reproduction."""
    arrays = {f"{i}/{name}": a for i, feed in enumerate(feeds) for name, a in feed.items()}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def load_inputs(path) -> list[Feed]:
    """Feeds from an .npz: keys ``<set>/<input>`` (as saved by save_inputs) or plain input names (one set)."""
    path = require_file(path, InputError, "inputs file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: inputs file is empty (expected an .npz of input arrays)")
    try:
        with np.load(path, allow_pickle=False) as data:
            feeds: dict[int, Feed] = {}
            for key in data.files:
                index, sep, name = key.partition("/")
                if not sep:
                    index, name = "0", key
                feeds.setdefault(int(index), {})[name] = data[key]
    except (ValueError, OSError, EOFError, AttributeError, TypeError) as exc:
        raise InputError(f"{path}: not a readable .npz of input arrays ({exc or type(exc).__name__})") from None
    if not feeds:
        raise InputError(f"{path}: holds no arrays")
    if sorted(feeds) != list(range(len(feeds))):  # else --set K would silently take another set
        raise InputError(f"{path}: input sets must be numbered 0 to {len(feeds) - 1} (as --save-inputs writes "
                         f"them); found {sorted(feeds)}")
    for index, feed in sorted(feeds.items()):
        for name, array in feed.items():
            if 0 in array.shape:
                raise InputError(f"{path}: input {name!r} (set {index}) has shape {tuple(array.shape)}: "
                                 "every dimension must be at least 1")
    return [feeds[i] for i in sorted(feeds)]


def model_input_specs(onnx_path) -> tuple[list[TensorSpec], list[str], list[list[int]]]:
    """Input specs, output names and the export's example shapes, read from the ONNX file."""
    import onnx

    model = load_onnx(onnx_path)
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        t = value.type.tensor_type
        specs.append(TensorSpec(value.name, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                                tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                      for d in t.shape.dim)))
    meta = metadata(model)
    if "polynl_deploy.example_shapes" in meta:
        examples = json.loads(meta["polynl_deploy.example_shapes"])
    else:  # not exported by this toolkit: dynamic dims default to 1 (batch) and 16 (others)
        examples = [[d if isinstance(d, int) else (1 if i == 0 else 16) for i, d in enumerate(s.shape)]
                    for s in specs]
    return specs, [o.name for o in model.graph.output], examples


def compare_runners(onnx_path, runners: dict[str, Runner], *, inputs: Sequence[Feed] | None = None,
             seed: int = defaults.SEED, tolerances: Tolerances | None = None,
             scales: Sequence[float] = defaults.VALIDATION_SHAPE_SCALES,
             on_progress: Callable[[str], None] | None = None) -> ValidationReport:
    """Run every runner on the same feeds and compare each output with the first runner's.

    ``runners`` maps backend names to loaded runners; the first one is the reference.
    Without ``inputs``, seeded random feeds are made at several shapes inside the dynamic range.
    """
    if len(runners) < 2:
        raise SettingsError("validate needs at least two backends (a reference and one to check)")
    tolerances = tolerances or Tolerances()
    specs, output_names, examples = model_input_specs(onnx_path)
    unknown = sorted(set(tolerances.per_output) - set(output_names))
    if unknown:
        raise SettingsError(f"tolerance given for output(s) {unknown} that {onnx_path} does not have; "
                            f"its outputs: {output_names}")
    if inputs is None:
        rng = np.random.default_rng(seed)
        inputs = [random_feed(specs, shapes, rng) for shapes in validation_shapes(specs, examples, scales)]
    names = list(runners)
    reference_name = names[0]
    comparisons = []
    outputs: dict[str, list[Feed]] = {name: [] for name in names}
    for index, feed in enumerate(inputs):
        results = {}
        for name in names:
            if on_progress:
                on_progress(f"{name} on input set {index}")
            results[name] = runners[name].infer(_in_input_types(feed, specs, runners[name].input_specs))
            outputs[name].append(results[name])
        reference = results[reference_name]
        for name in names[1:]:
            for output, expected in reference.items():
                actual = results[name].get(output)
                dtype = str(expected.dtype)
                tol = tolerances.for_output(output, runners[name].precision or dtype)
                stats = compare(expected, actual if actual is not None else np.full((0,), np.nan), tol)
                comparisons.append(OutputComparison(name, index, output, dtype, list(expected.shape),
                                                    tol.atol, tol.rtol, **stats))
    shapes = [{k: list(v.shape) for k, v in feed.items()} for feed in inputs]
    return ValidationReport(str(onnx_path), reference_name, names, shapes, comparisons, feeds=list(inputs),
                            outputs=outputs)


def _in_input_types(feed: Feed, model_specs: Sequence[TensorSpec], runner_specs: Sequence[TensorSpec]) -> Feed:
    """``feed`` (in the ONNX file's input types) with each float input the runner takes in another float
    type converted to it: a float16-I/O engine among float32 runners. Anything else is left for the
    runner's own input check."""
    model_types = {spec.name: spec.dtype for spec in model_specs}
    converted = dict(feed)
    for spec in runner_specs:
        array = feed.get(spec.name)
        if (array is not None and str(array.dtype) == model_types.get(spec.name) != spec.dtype
                and np.issubdtype(array.dtype, np.floating) and np.issubdtype(np.dtype(spec.dtype), np.floating)):
            converted[spec.name] = array.astype(spec.dtype)
    return converted


BACKENDS = ("eager", "ort")
KNOWN_BACKENDS = (*BACKENDS, "trt")


def make_runner(backend: str, onnx_path, model=None, engine_path=None) -> Runner:
    """Loader for a backend by name: ``eager`` needs the torch model, ``trt`` an engine (default: the
    ONNX path with suffix ``.plan``), the others the ONNX file."""
    if backend == "eager":
        if model is None:
            raise SettingsError("backend 'eager' needs the PyTorch model (give --source)")
        from polynl_deploy.backends.torch_backend import TorchRunner
        specs, outputs, _ = model_input_specs(onnx_path)
        return TorchRunner(model, specs, outputs)
    if backend == "ort":
        from polynl_deploy.backends.onnxruntime_backend import OnnxRuntimeRunner
        return OnnxRuntimeRunner(onnx_path)
    if backend == "trt":
        from polynl_deploy.tensorrt.runner import TensorRTRunner
        return TensorRTRunner(engine_path or Path(onnx_path).with_suffix(".plan"))
    raise SettingsError(f"unknown backend {backend!r}; available: {', '.join(KNOWN_BACKENDS)}")


def validate(onnx_path, model=None, *, backends: Sequence[str] = BACKENDS, inputs: Sequence[Feed] | None = None,
             seed: int = defaults.SEED, tolerances: Tolerances | None = None,
             scales: Sequence[float] = defaults.VALIDATION_SHAPE_SCALES, engine_path=None) -> ValidationReport:
    """Validate an exported file: the first backend is the reference (``eager`` needs ``model``,
    ``trt`` a TensorRT engine built from the file)."""
    runners = {name: make_runner(name, onnx_path, model, engine_path) for name in backends}
    return compare_runners(onnx_path, runners, inputs=inputs, seed=seed, tolerances=tolerances, scales=scales)


def render(report: ValidationReport, console) -> None:
    """A rich table of every comparison, then a PASSED/FAILED line."""
    from rich.table import Table

    table = Table(title=f"validate {report.model} (reference: {report.reference})")
    for column in ("backend", "set", "output", "shape", "max abs", "max rel", "min atol", "atol/rtol", "ok"):
        table.add_column(column, justify="right" if column.startswith(("max", "min", "set")) else "left")
    for c in report.comparisons:
        table.add_row(c.backend, str(c.input_set), c.output, "x".join(map(str, c.shape)),
                      f"{c.max_abs_error:.2e}", f"{c.max_rel_error:.2e}", f"{c.min_atol_to_pass:.2e}",
                      f"{c.atol:g}/{c.rtol:g}", "[green]yes" if c.passed else
                      ("[red]NaN/Inf" if c.nan_or_inf else "[red]NO"))
    console.print(table)
    for name, check in report.extra_checks.items():
        console.print(f"{name}: {check}")
    console.print("[bold green]PASSED" if report.passed else "[bold red]FAILED")
