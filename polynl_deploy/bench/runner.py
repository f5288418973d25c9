"""run_bench: the sweep over cases and contenders, then fits, targets, model-level timings and outputs."""

import importlib.util
import os
import platform
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from polynl_deploy.bench import contenders as registry
from polynl_deploy.bench.analysis import evaluate_gpu_targets, evaluate_targets, fit_all
from polynl_deploy.bench.contenders import REFERENCES, Contender, Workload, as_arrays, build_layer_modules
from polynl_deploy.bench.models import check_model_names, run_models
from polynl_deploy.bench.report import output_files, write_outputs
from polynl_deploy.bench.settings import (BenchResult, BenchSettings, BenchSettingsError, Case, Measurement,
                                          failure_reason)
from polynl_deploy.bench.timing import (call_with_cuda_peak_memory, call_with_peak_memory, summarize, time_calls,
                                        time_cuda_calls)
from polynl_deploy.io import check_outputs

GIB = 1024 ** 3


def _machine(threads: int, device: str) -> dict:
    import onnxruntime

    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
               "threads": threads, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
               "load_average_start": _load_average(), "device": device}
    if device == "cuda":
        machine.update(gpu=torch.cuda.get_device_name(), compute_capability="%d.%d" % torch.cuda.get_device_capability(),
                       cuda=torch.version.cuda)
    return machine


def _load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _record(contender: Contender, case: Case, status: str, settings: BenchSettings, reason: str = "") -> Measurement:
    return Measurement(contender.name, contender.family, contender.runtime, case.layout, case.batch, case.channels,
                       case.inner_channels, case.positions, status, reason,
                       floor_gflop=case.floor_flops / 1e9, device=settings.device, dtype=settings.dtype)


def nonlocal_skip_reason(case: Case, settings: BenchSettings, previous: Measurement | None) -> str | None:
    """Why NonLocal2d should not run at ``case``: its N x N matrix is over the memory cap, or one call
    is predicted (from ``previous``, a smaller N of the same group, scaled as N^2) to exceed the time budget."""
    pairwise_gib = case.batch * case.positions ** 2 * 4 / GIB
    if pairwise_gib > settings.nonlocal_memory_cap_gib:
        return (f"skipped: its B x N x N fp32 matrix needs {pairwise_gib:.1f} GiB > cap "
                f"{settings.nonlocal_memory_cap_gib:g} GiB (nonlocal_memory_cap_gib)")
    if previous is not None:
        predicted_s = previous.median_ms / 1e3 * (case.positions / previous.positions) ** 2
        if predicted_s > settings.nonlocal_time_budget_s:
            return (f"skipped: one call predicted at {predicted_s:.1f} s (N^2 from N={previous.positions}) "
                    f"> budget {settings.nonlocal_time_budget_s:g} s (nonlocal_time_budget_s)")
    return None


def _max_abs_error(got, reference) -> float:
    return max(float(abs(g - r).max()) for g, r in zip(got, reference))


class _Sweep:
    """State across cases: skipped contenders, the last measurement per group, reference outputs."""

    def __init__(self, settings: BenchSettings, threads: int, workdir: Path) -> None:
        self.settings, self.threads, self.workdir = settings, threads, workdir
        self.dropped: dict[str, str] = {}
        self.last_ok: dict[tuple, Measurement] = {}
        self.modules: dict[tuple, object] = {}

    def workload(self, case: Case) -> Workload:
        key = (case.layout, case.channels, case.reduction)
        if key not in self.modules:
            self.modules[key] = build_layer_modules(*key, self.settings.seed, self.workdir,
                                                    self.settings.device, self.settings.dtype)
        return Workload(case, self.modules[key], self.threads, self.settings.seed, self.settings.device,
                        self.settings.dtype)

    def prepare(self, contender: Contender, work: Workload, references: dict):
        """The record of ``contender`` at this case and its timed call: prepared, run once (peak memory,
        outputs against the family's reference). The call is None where the contender is skipped or failed."""
        case, settings = work.case, self.settings
        group = (contender.name, case.layout, case.batch, case.channels)
        if contender.name in self.dropped:
            return _record(contender, case, "skipped", settings, self.dropped[contender.name]), None
        if contender.family == "nonlocal":
            reason = nonlocal_skip_reason(case, settings, self.last_ok.get(group))
            if reason:
                return _record(contender, case, "skipped", settings, reason), None
        record = _record(contender, case, "ok", settings)
        on_gpu = settings.device == "cuda"
        try:
            started = time.perf_counter()
            call = contender.prepare(work)
            record.prepare_s = time.perf_counter() - started
            output, record.peak_memory_mib = (call_with_cuda_peak_memory if on_gpu else call_with_peak_memory)(call)
            arrays = as_arrays(output)
            del output
        except Exception as exc:  # one failing contender must not end the sweep
            return self._failed(contender, case, exc), None
        if contender.name == "polynl-naive-compile" and record.prepare_s > settings.compile_budget_s:
            self.dropped[contender.name] = (f"skipped: compiling took {record.prepare_s:.0f} s "
                                            f"> budget {settings.compile_budget_s:g} s (compile_budget_s)")
        reference = REFERENCES.get(contender.family)
        if reference == contender.name:
            references[contender.family] = arrays
        elif contender.family in references:
            record.max_abs_error = _max_abs_error(arrays, references[contender.family])
            record.error_reference = reference
        return record, call

    def time_round(self, contender: Contender, record: Measurement, call, rounds: list) -> Measurement | None:
        """One round of timed calls into ``rounds``; a failed record instead if the call raises."""
        settings = self.settings
        try:
            rounds.append((time_cuda_calls if settings.device == "cuda" else time_calls)(
                call, warmup=settings.warmup, repeats=settings.repeats, budget_s=settings.measurement_budget_s))
        except Exception as exc:  # as in prepare
            return self._failed(contender, record.case, exc)
        return None

    def finish(self, record: Measurement, rounds: list) -> Measurement:
        """Statistics over every round's calls, the best and worst round medians."""
        pooled = summarize([t for timing in rounds for t in timing.samples])
        record.median_ms, record.q1_ms, record.q3_ms = pooled.median * 1e3, pooled.q1 * 1e3, pooled.q3 * 1e3
        record.min_ms, record.max_ms, record.repeats = pooled.minimum * 1e3, pooled.maximum * 1e3, pooled.repeats
        record.rounds = len(rounds)
        record.best_round_ms = min(t.median for t in rounds) * 1e3
        record.worst_round_ms = max(t.median for t in rounds) * 1e3
        record.gflops_vs_floor = record.case.floor_flops / 1e6 / record.latency_ms
        self.last_ok[(record.contender, record.layout, record.batch, record.channels)] = record
        return record

    def _failed(self, contender: Contender, case: Case, exc: Exception) -> Measurement:
        reason = failure_reason(exc)
        if contender.name == "polynl-naive-compile":
            self.dropped[contender.name] = f"skipped: torch.compile failed earlier ({reason})"
        return _record(contender, case, "failed", self.settings, reason)

    def measure_case(self, case: Case, contenders: list[Contender], advance) -> list[Measurement]:
        """Every contender at ``case``: prepared one after another, then timed in ``rounds`` turns."""
        work, references = self.workload(case), {}
        prepared = []
        for contender in contenders:
            advance(f"{case.label()}  {contender.name} (prepare)", 0)
            prepared.append((contender, *self.prepare(contender, work, references), []))
        del references
        results: dict[str, Measurement] = {}
        for index in range(self.settings.rounds):
            for contender, record, call, rounds in prepared:
                advance(f"{case.label()}  {contender.name} (round {index + 1})", 1)
                if call is not None and contender.name not in results:
                    failed = self.time_round(contender, record, call, rounds)
                    if failed is not None:
                        results[contender.name] = failed
        return [results.get(contender.name) or (self.finish(record, rounds) if call is not None else record)
                for contender, record, call, rounds in prepared]


def _progress(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def run_bench(settings: BenchSettings) -> BenchResult:
    """Time every selected contender at every case of the grid; fit exponents, evaluate the targets,
    time the zoo models, and write CSV, JSON and plots to ``settings.output_dir``."""
    check_outputs(directories=[settings.output_dir], files=output_files(settings))
    if settings.plots and importlib.util.find_spec("matplotlib") is None:
        raise BenchSettingsError("plots need matplotlib (pip install 'polynl-deploy[bench]'), or pass --no-plots")
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise BenchSettingsError("device 'cuda' needs a CUDA GPU, and torch.cuda.is_available() is False here")
    check_model_names(settings.models)
    threads = settings.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    selected = registry.select(settings.contenders, settings.device)
    result = BenchResult(settings, _machine(threads, settings.device))
    result.unavailable = {c.name: reason for c in selected if (reason := c.unavailable_reason())}
    active = [c for c in selected if c.name not in result.unavailable]
    cases = settings.cases()
    with tempfile.TemporaryDirectory(prefix="polynl-bench-") as tmp, _progress(settings.progress) as progress:
        sweep = _Sweep(settings, threads, Path(tmp))
        task = progress.add_task("sweep", total=len(cases) * len(active) * settings.rounds) if progress else None

        def advance(description: str, steps: int) -> None:
            if progress:
                progress.update(task, description=description, advance=steps)

        with torch.inference_mode():
            for case in cases:
                result.measurements.extend(sweep.measure_case(case, active, advance))
        result.models, result.models_note = run_models(settings, threads, Path(tmp), progress)
    result.fits = fit_all(result.measurements)
    if settings.target is not None:
        result.target_case = settings.target
        evaluate = evaluate_gpu_targets if settings.device == "cuda" else evaluate_targets
        result.targets = evaluate(result, settings.target)
    result.machine["load_average_end"] = _load_average()
    write_outputs(result)
    return result
