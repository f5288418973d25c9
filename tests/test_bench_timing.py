"""polynl_deploy.bench.timing: statistics, the repeat budget (on a fake clock), peak memory.

No assertion depends on how fast this machine is: time is a fake clock that each call advances.
"""

import statistics
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from polynl_deploy.bench import timing
from polynl_deploy.bench.timing import MIN_REPEATS, Timing, summarize

SKEWED = [
    [0.010, 0.011, 0.012, 0.013, 0.500],  # one slow outlier: the mean is 5x the median
    [0.9, 0.002, 0.003, 0.001, 0.004, 0.7],  # even count, unsorted, two outliers
    [0.02, 0.02, 0.02, 0.03, 0.02, 0.02, 3.0, 0.02],
]


@pytest.mark.parametrize("samples", SKEWED)
def test_summarize_reports_robust_statistics_of_skewed_samples(samples):
    summary = summarize(samples)
    assert summary.median == pytest.approx(float(np.median(samples)), rel=1e-12)
    assert summary.median == pytest.approx(statistics.median(samples), rel=1e-12)
    assert summary.median < statistics.mean(samples) / 2  # the outliers do not move it
    q1, q3 = np.percentile(samples, [25, 75])  # linear interpolation between order statistics
    assert (summary.q1, summary.q3) == (pytest.approx(q1, rel=1e-12), pytest.approx(q3, rel=1e-12))
    assert (summary.minimum, summary.maximum) == (min(samples), max(samples))
    assert summary.repeats == len(samples) and summary.samples == tuple(samples)
    assert summary.minimum <= summary.q1 <= summary.median <= summary.q3 <= summary.maximum


def test_summarize_one_sample():
    assert summarize([0.25]) == Timing(0.25, 0.25, 0.25, 0.25, 0.25, 1, (0.25,))


class FakeClock:
    """perf_counter for timing.py; each call of the workload advances it by the next duration."""

    def __init__(self, durations):
        self.now, self.durations, self.calls = 100.0, list(durations), 0

    def perf_counter(self) -> float:
        return self.now

    def call(self) -> str:
        self.now += self.durations[self.calls]
        self.calls += 1
        return "output"


@pytest.fixture
def fake_clock(monkeypatch):
    def install(durations):
        clock = FakeClock(durations)
        monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=clock.perf_counter))
        return clock
    return install


def test_time_calls_times_each_call_after_the_warmup(fake_clock):
    warmup, durations = [5.0, 5.0], [0.25, 0.5, 0.125, 4.0, 0.25]
    clock = fake_clock(warmup + durations)
    result = timing.time_calls(clock.call, warmup=len(warmup), repeats=len(durations), budget_s=1e9)
    assert clock.calls == len(warmup) + len(durations)
    assert result.samples == pytest.approx(durations) and result.repeats == len(durations)
    assert result.median == pytest.approx(statistics.median(durations))


@pytest.mark.parametrize("budget_s, expected", [(0.0, MIN_REPEATS), (2.5, MIN_REPEATS), (4.5, 5), (8.5, 9),
                                                (1e9, 12)])
def test_time_calls_stops_past_its_budget_after_at_least_min_repeats(fake_clock, budget_s, expected):
    """1 s per timed call (10 s warm-up calls, not counted): it stops after the first call past the budget."""
    clock = fake_clock([10.0] * 2 + [1.0] * 12)
    result = timing.time_calls(clock.call, warmup=2, repeats=12, budget_s=budget_s)
    assert result.repeats == len(result.samples) == expected
    assert clock.calls == 2 + expected


def test_time_calls_never_runs_more_than_repeats(fake_clock):
    clock = fake_clock([1.0] * 5)
    assert timing.time_calls(clock.call, warmup=0, repeats=MIN_REPEATS - 1, budget_s=0.0).repeats == MIN_REPEATS - 1
    assert clock.calls == MIN_REPEATS - 1


class FakeCuda:
    """torch.cuda's events, synchronize and allocator counters, driven by a FakeClock."""

    def __init__(self, clock, allocated_mib=0, peak_mib=0):
        self.clock, self.synchronized, self.resets = clock, 0, 0
        self.allocated, self.peak = allocated_mib * 2 ** 20, peak_mib * 2 ** 20
        cuda = self

        class Event:
            def __init__(self, enable_timing=False):
                assert enable_timing
                self.at = None

            def record(self):
                self.at = cuda.clock.now

            def synchronize(self):
                cuda.synchronized += 1

            def elapsed_time(self, end):  # milliseconds, as torch.cuda.Event reports
                return (end.at - self.at) * 1e3

        self.Event = Event

    def synchronize(self):
        self.synchronized += 1

    def memory_allocated(self):
        return self.allocated

    def reset_peak_memory_stats(self):
        self.resets += 1

    def max_memory_allocated(self):
        return self.peak


def _install_fake_cuda(monkeypatch, cuda):
    for name in ("Event", "synchronize", "memory_allocated", "reset_peak_memory_stats", "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, getattr(cuda, name))


def test_time_cuda_calls_reads_events_in_seconds_and_keeps_the_budget(fake_clock, monkeypatch):
    durations = [0.5, 0.25, 2.0, 0.125, 0.5, 0.25]
    clock = fake_clock([9.0] + durations)
    _install_fake_cuda(monkeypatch, FakeCuda(clock))
    result = timing.time_cuda_calls(clock.call, warmup=1, repeats=len(durations), budget_s=1e9)
    assert result.samples == pytest.approx(durations) and result.median == pytest.approx(statistics.median(durations))

    clock = fake_clock([1.0] * 10)
    _install_fake_cuda(monkeypatch, FakeCuda(clock))
    result = timing.time_cuda_calls(clock.call, warmup=0, repeats=10, budget_s=3.5)
    assert result.repeats == clock.calls == 4


def test_cuda_peak_memory_is_the_allocator_peak_above_the_memory_before(monkeypatch):
    clock = FakeClock([0.0, 0.0])
    cuda = FakeCuda(clock, allocated_mib=100, peak_mib=164)
    _install_fake_cuda(monkeypatch, cuda)

    def call():
        assert cuda.resets == 1  # the peak counter is reset before the call
        return clock.call()

    assert timing.call_with_cuda_peak_memory(call) == ("output", pytest.approx(64.0))
    cuda.peak = 50 * 2 ** 20  # a peak below the memory before the call counts as nothing
    cuda.resets = 0
    assert timing.call_with_cuda_peak_memory(call)[1] == 0.0


needs_peak_memory = pytest.mark.skipif(not timing.peak_memory_supported(),
                                       reason="/proc/self/clear_refs cannot reset the high-water mark here")
MIB = 2 ** 20


@needs_peak_memory
def test_peak_memory_counts_what_the_call_allocates_not_the_process_history():
    # Raise the process's high-water mark with 256 MiB on malloc's heap, then free most of it: the
    # freed pages stay resident until call_with_peak_memory trims the heap, and none of it is the call's.
    ballast = [bytes([i % 251]) * 4096 for i in range(256 * MIB // 4096)]
    kept = ballast[::16]
    del ballast
    result, idle = timing.call_with_peak_memory(lambda: "idle")
    del kept
    assert result == "idle" and idle is not None and idle < 16
    size_mib = 64
    total, peak = timing.call_with_peak_memory(lambda: float(np.ones(size_mib * MIB // 8).sum()))
    assert total == size_mib * MIB // 8
    assert 0.9 * size_mib <= peak < size_mib + 32, peak


def test_peak_memory_is_none_where_the_high_water_mark_cannot_be_reset(monkeypatch, tmp_path):
    monkeypatch.setattr(timing, "_CLEAR_REFS", tmp_path / "missing" / "clear_refs")
    assert not timing.peak_memory_supported()
    assert timing.call_with_peak_memory(lambda: 7) == (7, None)
