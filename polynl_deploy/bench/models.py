"""Zoo models end to end: eager PyTorch vs their custom-op export on ONNX Runtime CPU."""

from pathlib import Path

import numpy as np
import torch

from polynl_deploy.bench.settings import BenchSettings, ModelMeasurement
from polynl_deploy.bench.timing import time_calls


def registry_or_reason():
    """(polynl_models.registry, "") or (None, why it cannot be used)."""
    try:
        from polynl_models import registry
    except ImportError as exc:
        return None, f"polynl_models.registry is not available ({exc}); model-level benchmarks skipped"
    if not all(hasattr(registry, name) for name in ("build_model", "get_spec")):
        return None, "polynl_models.registry lacks build_model/get_spec; model-level benchmarks skipped"
    return registry, ""


def _iqr(timing) -> float:
    return (timing.q3 - timing.q1) * 1e3


def measure_model(registry, name: str, settings: BenchSettings, threads: int, workdir: Path) -> ModelMeasurement:
    from polynl_deploy.backends.onnxruntime_backend import session_from_onnx
    from polynl_deploy.export.exporter import export_onnx

    spec = registry.get_spec(name)
    model = registry.build_model(name).eval()
    x = spec.example_input(batch=settings.model_batch, seed=settings.seed)
    record = ModelMeasurement(name, settings.model_batch, tuple(spec.input_shape), "ok")
    try:
        path = workdir / f"model_{name}.onnx"
        export_onnx(model, x, path, mode="custom-op")
        session = session_from_onnx(path, ["CPUExecutionProvider"], threads)
        feed = {session.get_inputs()[0].name: x.numpy()}
        timing = {"warmup": settings.warmup, "repeats": settings.repeats, "budget_s": settings.measurement_budget_s}
        eager = time_calls(lambda: model(x), **timing)
        ort = time_calls(lambda: session.run(None, feed), **timing)
        expected, got = model(x).numpy(), session.run(None, feed)[0]
    except Exception as exc:  # a model that fails to export or run is reported, the rest go on
        record.status, record.reason = "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return record
    record.eager_median_ms, record.eager_iqr_ms = eager.median * 1e3, _iqr(eager)
    record.ort_median_ms, record.ort_iqr_ms = ort.median * 1e3, _iqr(ort)
    record.eager_over_ort = eager.median / ort.median
    record.max_abs_error = float(np.max(np.abs(expected - got)))
    return record


def run_models(settings: BenchSettings, threads: int, workdir: Path, progress=None) -> tuple[list, str]:
    """Measurements of ``settings.models`` and a note (why skipped, if so)."""
    if not settings.models:
        return [], ""
    if settings.device != "cpu":
        return [], "zoo models are timed in CPU runs (eager vs ONNX Runtime CPU), not on cuda"
    registry, reason = registry_or_reason()
    if registry is None:
        return [], reason
    task = progress.add_task("zoo models", total=len(settings.models)) if progress else None
    results = []
    with torch.inference_mode():
        for name in settings.models:
            if progress:
                progress.update(task, description=f"zoo model {name}")
            results.append(measure_model(registry, name, settings, threads, workdir))
            if progress:
                progress.advance(task)
    return results, ""
