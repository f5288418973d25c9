"""Zoo models end to end, host array in to host array out, on the run's device: eager PyTorch against
the custom-op export on ONNX Runtime and, on cuda, a TensorRT engine with the PolyNL plugin where
full TensorRT and the plugin library are present."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from polynl_deploy import features
from polynl_deploy.bench.contenders import tensorrt_engine_call, tensorrt_unavailable_reason
from polynl_deploy.bench.settings import (BenchSettings, BenchSettingsError, ModelMeasurement, ModelTiming,
                                          failure_reason)
from polynl_deploy.bench.timing import time_calls

EAGER = "eager"


@dataclass
class ModelWork:
    """One zoo model and its input; the ONNX export is written on first use."""

    name: str
    model: torch.nn.Module
    x: np.ndarray
    device: str
    threads: int
    workdir: Path
    _onnx_path: Path | None = None

    def onnx_path(self) -> Path:
        if self._onnx_path is None:
            from polynl_deploy.export.exporter import export_onnx

            self._onnx_path = self.workdir / f"model_{self.name}.onnx"
            export_onnx(self.model.cpu(), torch.from_numpy(self.x), self._onnx_path, mode="custom-op")
            self.model.to(self.device)
        return self._onnx_path


def _eager(work: ModelWork) -> Callable[[], np.ndarray]:
    model, device = work.model.to(work.device), torch.device(work.device)
    return lambda: model(torch.from_numpy(work.x).to(device)).cpu().numpy()


def _onnxruntime(work: ModelWork) -> Callable[[], np.ndarray]:
    from polynl_deploy.backends.onnxruntime_backend import session_from_onnx

    provider = "CUDAExecutionProvider" if work.device == "cuda" else "CPUExecutionProvider"
    session = session_from_onnx(work.onnx_path(), [provider], work.threads)
    feed = {session.get_inputs()[0].name: work.x}
    return lambda: session.run(None, feed)[0]


def _onnxruntime_unavailable(device: str) -> str | None:
    if device == "cuda" and not features.detect().ort_cuda:
        return "ONNX Runtime has no CUDAExecutionProvider here (install onnxruntime-gpu with its CUDA libraries)"
    return None


def _tensorrt(work: ModelWork) -> Callable[[], np.ndarray]:
    onnx_path = work.onnx_path()
    call = tensorrt_engine_call(onnx_path, onnx_path.with_suffix(".plan"), work.x)
    return lambda: next(iter(call().values()))


def _tensorrt_unavailable(device: str) -> str | None:
    if device != "cuda":
        return "TensorRT runs on a GPU: time it in a cuda run (polynl bench --gpu)"
    return tensorrt_unavailable_reason()


@dataclass(frozen=True)
class ModelBackend:
    name: str
    prepare: Callable[[ModelWork], Callable[[], Any]]
    unavailable_reason: Callable[[str], str | None] = lambda device: None


MODEL_BACKENDS = (ModelBackend(EAGER, _eager), ModelBackend("onnxruntime", _onnxruntime, _onnxruntime_unavailable),
                  ModelBackend("tensorrt", _tensorrt, _tensorrt_unavailable))
"""Eager first: it is every other backend's reference."""


def registry_or_reason():
    """(polynl_models.registry, "") or (None, why it cannot be used)."""
    try:
        from polynl_models import registry
    except ImportError as exc:
        return None, f"polynl_models.registry is not available ({exc}); model-level benchmarks skipped"
    if not all(hasattr(registry, name) for name in ("build_model", "get_spec", "list_models")):
        return None, "polynl_models.registry lacks build_model/get_spec/list_models; model-level benchmarks skipped"
    return registry, ""


def check_model_names(names: tuple[str, ...]) -> None:
    """Refuse names the zoo registry does not know (before anything is timed)."""
    registry, _ = registry_or_reason()
    unknown = [name for name in names if registry is not None and name not in registry.list_models()]
    if unknown:
        raise BenchSettingsError(f"unknown zoo model(s) {unknown}; known: {registry.list_models()}")


def _time(call: Callable[[], np.ndarray], settings: BenchSettings,
          reference: np.ndarray | None) -> tuple[ModelTiming, np.ndarray]:
    """Wall-clock timing: every backend returns a host array, so each call ends when its work does."""
    output = call()
    timing = time_calls(call, warmup=settings.warmup, repeats=settings.repeats,
                        budget_s=settings.measurement_budget_s)
    error = None if reference is None else float(np.max(np.abs(np.asarray(output, np.float64) - reference)))
    return ModelTiming("ok", median_ms=timing.median * 1e3, iqr_ms=(timing.q3 - timing.q1) * 1e3,
                       max_abs_error=error), output


def measure_model(registry, name: str, settings: BenchSettings, threads: int, workdir: Path,
                  backends: tuple[ModelBackend, ...]) -> ModelMeasurement:
    """Every backend on one model; a backend that fails is reported with its reason, the others go on."""
    spec = registry.get_spec(name)
    x = spec.example_input(batch=settings.model_batch, seed=settings.seed)
    record = ModelMeasurement(name, settings.model_batch, tuple(spec.input_shape), settings.device, "ok")
    work = ModelWork(name, registry.build_model(name).eval(), x.numpy(), settings.device, threads, workdir)
    reference = None
    for backend in backends:
        try:
            timing, output = _time(backend.prepare(work), settings, reference)
        except Exception as exc:  # a backend that cannot export, build or run this model
            reason = failure_reason(exc)
            record.backends[backend.name] = ModelTiming("failed", reason=reason)
            if backend.name == EAGER:
                record.status, record.reason = "failed", f"eager: {reason}"
                return record
            continue
        if backend.name == EAGER:
            reference = np.asarray(output, np.float64)
        record.backends[backend.name] = timing
    eager = record.backends[EAGER].median_ms
    for timing in record.backends.values():
        if timing.status == "ok" and timing.median_ms:
            timing.eager_over = eager / timing.median_ms
    return record


def run_models(settings: BenchSettings, threads: int, workdir: Path, progress=None) -> tuple[list, str]:
    """Measurements of ``settings.models`` on every backend this machine has, and a note on the rest."""
    if not settings.models:
        return [], ""
    registry, reason = registry_or_reason()
    if registry is None:
        return [], reason
    unavailable = {b.name: why for b in MODEL_BACKENDS if (why := b.unavailable_reason(settings.device))}
    backends = tuple(b for b in MODEL_BACKENDS if b.name not in unavailable)
    note = "; ".join(f"{name} not timed: {why}" for name, why in unavailable.items())
    task = progress.add_task("zoo models", total=len(settings.models)) if progress else None
    results = []
    with torch.inference_mode():
        for name in settings.models:
            if progress:
                progress.update(task, description=f"zoo model {name}")
            results.append(measure_model(registry, name, settings, threads, workdir, backends))
            if progress:
                progress.advance(task)
    return results, note

