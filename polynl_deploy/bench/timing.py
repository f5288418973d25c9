"""Timing with warm-up and robust statistics, and the peak memory of one call.

Peak memory is measured in-process on Linux: freed heap memory is returned to the OS
(``malloc_trim``), the kernel's resident high-water mark is reset (``/proc/self/clear_refs``
with ``5``), the call runs, and VmHWM minus the resident size before the call is its peak
extra memory: intermediates, outputs, and the workspace ONNX Runtime's arena allocates on a
session's first run. ``tracemalloc`` would see none of that (torch and ONNX Runtime allocate
outside Python's allocator). Where the high-water mark cannot be reset, memory is not reported.
On CUDA, calls are timed with CUDA events and memory is torch's allocator peak.
"""

import ctypes
import ctypes.util
import gc
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

MIN_REPEATS = 3
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


@dataclass(frozen=True)
class Timing:
    """Seconds per call over ``repeats`` timed calls."""

    median: float
    q1: float
    q3: float
    minimum: float
    maximum: float
    repeats: int
    samples: tuple[float, ...] = ()


def summarize(samples: list[float]) -> Timing:
    if len(samples) == 1:
        q1 = q3 = samples[0]
    else:
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return Timing(statistics.median(samples), q1, q3, min(samples), max(samples), len(samples), tuple(samples))


def time_calls(call: Callable[[], Any], *, warmup: int, repeats: int, budget_s: float) -> Timing:
    """Warm up, then time up to ``repeats`` calls; stop early (after MIN_REPEATS) past ``budget_s``."""
    for _ in range(warmup):
        call()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < repeats:
        begin = time.perf_counter()
        call()
        samples.append(time.perf_counter() - begin)
        if len(samples) >= MIN_REPEATS and time.perf_counter() - started > budget_s:
            break
    return summarize(samples)


def _status_kib(field_name: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


def _release_free_heap() -> None:
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


def peak_memory_supported() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        _status_kib("VmHWM")
    except (OSError, KeyError):
        return False
    return True


def call_with_peak_memory(call: Callable[[], Any]) -> tuple[Any, float | None]:
    """Run ``call`` once; its result and the peak resident memory it added, in MiB (None if unmeasurable)."""
    if not peak_memory_supported():
        return call(), None
    _release_free_heap()
    before = _status_kib("VmRSS")
    _CLEAR_REFS.write_text("5")
    result = call()
    peak = _status_kib("VmHWM")
    return result, max(peak - before, 0) / 1024


def time_cuda_calls(call: Callable[[], Any], *, warmup: int, repeats: int, budget_s: float) -> Timing:
    """As ``time_calls``, timed on the GPU with CUDA events around each call on the current stream."""
    import torch

    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < repeats:
        begin.record()
        call()
        end.record()
        end.synchronize()
        samples.append(begin.elapsed_time(end) / 1e3)
        if len(samples) >= MIN_REPEATS and time.perf_counter() - started > budget_s:
            break
    return summarize(samples)


def call_with_cuda_peak_memory(call: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``call`` once; its result and the peak CUDA memory (MiB) torch's allocator handed out during it."""
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = call()
    torch.cuda.synchronize()
    return result, max(torch.cuda.max_memory_allocated() - before, 0) / 2 ** 20
