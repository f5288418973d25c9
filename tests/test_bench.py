"""polynl_deploy.bench on a tiny grid: outputs and their columns, exponent fits, numerics, skip paths.

No timing assertions: timings on a shared CI machine are noise at these sizes.
"""

import csv
import json
import math

import numpy as np
import pytest
import torch

from polynl_deploy.bench import BenchSettings, Case, run_bench
from polynl_deploy.bench.analysis import fit_exponent, fit_all
from polynl_deploy.bench.contenders import CONTENDERS
from polynl_deploy.bench.runner import nonlocal_skip_reason
from polynl_deploy.bench.settings import MEASUREMENT_COLUMNS, BenchSettingsError, Measurement

FAST_CONTENDERS = tuple(c.name for c in CONTENDERS if "cpu" in c.devices and c.name != "polynl-naive-compile")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Maps 4² and 8², tokens 16, C=8, batch 1 and 2; every contender except torch.compile (slow to compile).

    Also the largest |output| of each family's reference contender at each case, read from the sweep's
    own first call (the layer weights are not seeded globally, so a rebuild would differ)."""
    from dataclasses import replace as dc_replace

    from polynl_deploy.bench import contenders
    from polynl_deploy.bench.contenders import REFERENCES, as_arrays

    scales: dict[tuple[str, Case], float] = {}

    def recording(contender):
        def prepare(work):
            call = contender.prepare(work)

            def recorded_call():
                output = call()
                if (contender.name, work.case) not in scales:
                    scales[contender.name, work.case] = max(float(np.abs(a).max()) for a in as_arrays(output))
                return output
            return recorded_call
        return dc_replace(contender, prepare=prepare)

    settings = BenchSettings(map_sides=(4, 8), token_lengths=(16,), channels=(8,), batches=(1, 2), repeats=2,
                             warmup=0, contenders=FAST_CONTENDERS, target=Case("maps", 1, 8, 64),
                             output_dir=tmp_path_factory.mktemp("bench"), progress=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(contenders, "CONTENDERS", tuple(recording(c) if c.name in REFERENCES.values() else c
                                                      for c in contenders.CONTENDERS))
        return run_bench(settings), scales


@pytest.fixture(scope="module")
def tiny(tiny_run):
    return tiny_run[0]


def test_writes_csv_json_and_plots(tiny):
    out = tiny.settings.output_dir
    with open(out / "measurements.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == MEASUREMENT_COLUMNS
    for column in ("contender", "median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms", "peak_memory_mib",
                   "gflops_vs_floor", "max_abs_error", "status", "reason"):
        assert column in MEASUREMENT_COLUMNS
    ran = [c for c in FAST_CONTENDERS if c not in tiny.unavailable]
    assert len(rows) == len(ran) * len(tiny.settings.cases())
    assert {r["status"] for r in rows} == {"ok"}
    document = json.loads((out / "results.json").read_text())
    assert {"settings", "machine", "measurements", "scaling_fits", "targets", "unavailable"} <= set(document)
    for name in ("latency_vs_n_maps.png", "speedup_vs_nonlocal_maps.png", "latency_vs_n_tokens.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_absent_gpu_contender_has_a_reason(tiny):
    """The TensorRT plugin is the only CPU-sweep contender that needs a GPU: it is unavailable with a
    reason naming what this machine lacks, or, where everything is present, it ran."""
    from polynl_deploy.features import detect

    found = detect()
    assert set(tiny.unavailable) <= {"polynl-tensorrt-plugin"}, tiny.unavailable
    reason = tiny.unavailable.get("polynl-tensorrt-plugin")
    if not found.cuda:
        assert reason and "CUDA GPU" in reason
    elif not found.tensorrt_runtime:
        assert reason and "TensorRT" in reason
    elif found.plugin_library is None:
        assert reason and "plugin library" in reason
    else:
        assert reason is None
        ran = [m for m in tiny.measurements if m.contender == "polynl-tensorrt-plugin"]
        assert len(ran) == len(tiny.settings.cases()) and {m.status for m in ran} == {"ok"}, ran


def test_gpu_contenders_are_available_exactly_when_their_hardware_and_builds_are(monkeypatch, tmp_path):
    """Both branches on any machine: the reasons come from features.detect(), torch.cuda and the tools."""
    import dataclasses

    from polynl_deploy import features, kernels
    from polynl_deploy.bench import contenders

    reason_of = {c.name: c.unavailable_reason for c in CONTENDERS}
    tensorrt, fused = reason_of["polynl-tensorrt-plugin"], reason_of["polynl-cuda-fused-kernel"]
    plugin = tmp_path / "libpolynl_plugin.so"
    present = dataclasses.replace(features.detect(), cuda=True, tensorrt="10.0", plugin_library=plugin)
    for found, missing in ((present, None),
                           (dataclasses.replace(present, cuda=False), "CUDA GPU"),
                           (dataclasses.replace(present, tensorrt=None), "TensorRT"),
                           (dataclasses.replace(present, plugin_library=None), "plugin library")):
        monkeypatch.setattr(features, "detect", lambda found=found: found)
        reason = tensorrt()
        assert (reason is None) if missing is None else (reason and missing in reason), (found, reason)

    library = tmp_path / "libpolynl_kernels.so"
    for gpu, built, tools, missing in ((True, library, False, None), (True, None, True, None),
                                       (False, library, True, "CUDA GPU"), (True, None, False, "nvcc")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda gpu=gpu: gpu)
        monkeypatch.setattr(kernels, "find_kernel_library", lambda built=built: built)
        monkeypatch.setattr(contenders.shutil, "which", lambda name, tools=tools: f"/usr/bin/{name}" if tools else None)
        reason = fused()
        assert (reason is None) if missing is None else (reason and missing in reason), (gpu, built, tools, reason)


# fp32 agreement, relative to the largest |reference output| (Poly-NL outputs are O(1..10), the floor's
# S = X X^T grows with N to O(100)): a few ulps (eps = 1.2e-7), grown by the reductions (C = 8 channels,
# N <= 64 positions) summed in other orders by MLAS / MKL / eager, with a ~10x margin over the worst
# seen (~1.5 eps). The former absolute 1e-3 let through errors ~1000x the fp32 rounding of O(1) outputs.
FP32_ERROR_RTOL = 16 * float(np.finfo(np.float32).eps)


def test_contenders_match_their_reference(tiny_run):
    """ORT (custom-op, standard-ops), folded eager vs naive eager; the ORT floor vs the torch floor."""
    tiny, reference_scales = tiny_run
    compared = [m for m in tiny.measurements if m.error_reference]
    assert {m.contender for m in compared} >= {"polynl-folded-eager", "polynl-ort-custom-op",
                                               "polynl-ort-standard-ops", "floor-ort"}
    for m in compared:
        bound = FP32_ERROR_RTOL * reference_scales[m.error_reference, m.case]
        assert m.max_abs_error <= bound, (m.contender, m.case, m.max_abs_error, bound)


def test_targets_and_fits_are_reported(tiny):
    assert {t.key for t in tiny.targets} == {"a", "b", "c", "d"}
    assert all(t.value is not None and t.basis for t in tiny.targets)
    assert any(f.contender == "polynl-ort-custom-op" and f.points == 2 for f in tiny.fits)


TARGET = Case("maps", 1, 256, 128 ** 2)


def _targets_result(at_target: dict[str, float], exponents: dict[str, float]):
    """Each contender measured at TARGET (latency given, ms) and at two smaller N, following N^exponent."""
    from polynl_deploy.bench.settings import BenchResult

    result = BenchResult(BenchSettings(target=TARGET), {})
    for name, latency in at_target.items():
        for side in (32, 64, 128):
            case = Case(TARGET.layout, TARGET.batch, TARGET.channels, side ** 2)
            scale = (case.positions / TARGET.positions) ** exponents[name]
            result.measurements.append(Measurement(name, "polynl", "torch", case.layout, case.batch, case.channels,
                                                   case.inner_channels, case.positions, "ok",
                                                   median_ms=latency * scale))
    result.fits = fit_all(result.measurements)
    return result


def _checks_by_figure(checks):
    """TargetCheck by (key, what it is about): the contender label of (c) and (d)."""
    from polynl_deploy.bench import analysis

    labels = ["Poly-NL", *analysis.NONLOCAL_LABELS.values()]
    by_figure = {}
    for check in checks:
        about = next((label for label in labels if f"of {label}" in check.description
                      or check.description.startswith(label)), None)
        by_figure[(check.key, about if check.key in "cd" else None)] = check
    return by_figure


@pytest.mark.parametrize("side", ["met", "missed"])
def test_targets_a_to_d_compare_each_ratio_and_exponent_with_its_threshold(side):
    """Synthetic latencies 10 % on either side of each threshold: the verdicts and the values."""
    from polynl_deploy.bench import analysis as A

    meet = side == "met"
    good, bad = (1.1, 0.9) if meet else (0.9, 1.1)  # factor on the threshold: "at least" goals, then "at most"
    dot, gauss = A.NONLOCAL_LABELS
    low, high = A.NONLOCAL_EXPONENT_RANGE
    ort = 1.0
    latencies = {A.ORT_POLYNL: ort, A.FLOOR_ORT: ort / (bad * A.FLOOR_RATIO_MAX),
                 A.FLOOR_TORCH: ort / 3.0, A.NAIVE_EAGER: ort * good * A.NAIVE_SPEEDUP_MIN,
                 dot: ort * good * A.NONLOCAL_SPEEDUP_MIN, gauss: ort * bad * A.NONLOCAL_SPEEDUP_MIN}
    exponents = {name: 1.0 for name in latencies}
    exponents.update({A.ORT_POLYNL: A.POLYNL_EXPONENT_MAX + (-0.1 if meet else 0.1),
                      dot: (low + high) / 2 if meet else high + 0.1, gauss: low - 0.1 if meet else (low + high) / 2})
    checks = A.evaluate_targets(_targets_result(latencies, exponents), TARGET)
    by_figure = _checks_by_figure(checks)
    assert len(by_figure) == len(checks) == 7
    dot_label, gauss_label = A.NONLOCAL_LABELS.values()
    expected = {
        ("a", None): (ort / latencies[A.FLOOR_ORT], meet),
        ("b", None): (latencies[A.NAIVE_EAGER] / ort, meet),
        ("c", dot_label): (latencies[dot] / ort, meet),
        ("c", gauss_label): (latencies[gauss] / ort, not meet),
        ("d", "Poly-NL"): (exponents[A.ORT_POLYNL], meet),
        ("d", dot_label): (exponents[dot], meet),
        ("d", gauss_label): (exponents[gauss], not meet),
    }
    for figure, (value, met) in expected.items():
        check = by_figure[figure]
        assert check.value == pytest.approx(value, rel=1e-9), (figure, check)
        assert check.met is met, (figure, check)
        assert check.basis.startswith("measured"), (figure, check)
    assert f"(vs the torch-matmul floor: {ort / latencies[A.FLOOR_TORCH]:.2f}x)" in by_figure[("a", None)].basis


def test_targets_a_to_c_are_met_exactly_at_their_thresholds():
    """The goals are <= FLOOR_RATIO_MAX and >= the speed-up minima: equality meets them."""
    from polynl_deploy.bench import analysis as A

    dot, gauss = A.NONLOCAL_LABELS
    at_floor = {A.ORT_POLYNL: A.FLOOR_RATIO_MAX, A.FLOOR_ORT: 1.0}
    at_speedups = {A.ORT_POLYNL: 1.0, A.NAIVE_EAGER: A.NAIVE_SPEEDUP_MIN, dot: A.NONLOCAL_SPEEDUP_MIN,
                   gauss: A.NONLOCAL_SPEEDUP_MIN}
    for latencies, thresholds in ((at_floor, {"a": A.FLOOR_RATIO_MAX}),
                                  (at_speedups, {"b": A.NAIVE_SPEEDUP_MIN, "c": A.NONLOCAL_SPEEDUP_MIN})):
        checks = A.evaluate_targets(_targets_result(latencies, dict.fromkeys(latencies, 1.0)), TARGET)
        compared = [t for t in checks if t.key in thresholds]
        assert len(compared) == len(thresholds) + ("c" in thresholds)  # (c) for each NonLocal mode
        for check in compared:
            assert check.value == thresholds[check.key] and check.met is True, check


def test_targets_without_a_measurement_are_not_evaluated():
    from polynl_deploy.bench import analysis as A

    checks = A.evaluate_targets(_targets_result({A.ORT_POLYNL: 1.0}, {A.ORT_POLYNL: 1.0}), TARGET)
    unevaluated = [t for t in checks if not (t.key == "d" and "Poly-NL" in t.description)]
    assert len(unevaluated) == 6
    for check in unevaluated:
        assert check.value is None and check.met is None, check
        assert "not measured" in check.basis or "fewer than two measured N" in check.basis, check


def test_exponent_fit_recovers_synthetic_powers():
    n = np.array([1024, 4096, 16384, 65536])
    for exponent in (1.0, 2.0, 1.37):
        fitted, intercept = fit_exponent(n, 3e-4 * n ** exponent)
        assert fitted == pytest.approx(exponent, abs=1e-9)
        assert math.exp(intercept) == pytest.approx(3e-4)
    with pytest.raises(ValueError):
        fit_exponent([1024, 1024], [1.0, 2.0])


def _measurement(contender: str, positions: int, median_ms: float, status: str = "ok") -> Measurement:
    return Measurement(contender, "nonlocal", "torch", "maps", 1, 256, 128, positions, status,
                       median_ms=median_ms if status == "ok" else None)


def test_fit_all_groups_and_extrapolation_is_labelled():
    from polynl_deploy.bench.analysis import latency_at
    from polynl_deploy.bench.settings import BenchResult

    name = "nonlocal-dot-product-eager"
    result = BenchResult(BenchSettings(), {})
    result.measurements = [_measurement(name, 32 ** 2, 1.0), _measurement(name, 64 ** 2, 16.0),
                           _measurement(name, 128 ** 2, 0.0, status="skipped")]
    result.fits = fit_all(result.measurements)
    assert [f.exponent for f in result.fits] == [pytest.approx(2.0)]
    value, basis = latency_at(result, name, Case("maps", 1, 256, 128 ** 2))
    assert value == pytest.approx(256.0)
    assert basis.startswith("EXTRAPOLATED")


def test_nonlocal_memory_cap_skips_with_reason():
    settings = BenchSettings(nonlocal_memory_cap_gib=0.5)
    target = Case("maps", 1, 256, 128 ** 2)  # N x N fp32 = 1 GiB
    reason = nonlocal_skip_reason(target, settings, None)
    assert reason and "1.0 GiB > cap 0.5 GiB" in reason
    assert nonlocal_skip_reason(Case("maps", 1, 256, 64 ** 2), settings, None) is None


def test_nonlocal_time_budget_skips_from_a_smaller_measurement():
    settings = BenchSettings(nonlocal_time_budget_s=1.0)
    previous = _measurement("nonlocal-dot-product-eager", 64 ** 2, 300.0)  # 0.3 s -> 4.8 s at 128²
    reason = nonlocal_skip_reason(Case("maps", 1, 256, 128 ** 2), settings, previous)
    assert reason and "predicted" in reason


def test_memory_cap_skip_appears_in_the_sweep(tmp_path):
    settings = BenchSettings(map_sides=(8,), channels=(8,), repeats=1, warmup=0, nonlocal_memory_cap_gib=1e-9,
                             contenders=("polynl-naive-eager", "nonlocal-dot-product-eager"), target=None,
                             output_dir=tmp_path, progress=False, plots=False)
    result = run_bench(settings)
    skipped = [m for m in result.measurements if m.contender == "nonlocal-dot-product-eager"]
    assert [m.status for m in skipped] == ["skipped"] and "cap" in skipped[0].reason


def test_settings_reject_unknown_names():
    with pytest.raises(BenchSettingsError):
        BenchSettings.preset_named("fastest")
    with pytest.raises(BenchSettingsError):
        run_bench(BenchSettings(contenders=("polynl-magic",), progress=False))
    with pytest.raises(BenchSettingsError):
        Case("maps", 1, 8, 50)


def test_presets_have_the_documented_grids():
    targets = BenchSettings.preset_named("targets")
    assert targets.target == Case("maps", 1, 256, 128 ** 2) and targets.target.inner_channels == 128
    assert targets.target in targets.cases()
    assert {c.channels for c in targets.cases()} == {256} and {c.batch for c in targets.cases()} == {1}
    full = BenchSettings.preset_named("full")
    assert {c.batch for c in full.cases()} == {1, 8} and {c.channels for c in full.cases()} == {64, 256, 1024}
    assert max(c.positions for c in full.cases()) == 256 ** 2


def test_gpu_preset_and_device_rules():
    gpu = BenchSettings.preset_named("gpu")
    assert (gpu.device, gpu.dtype) == ("cuda", "float16")
    assert {c.channels for c in gpu.cases()} == {64, 128, 256, 512} and {c.batch for c in gpu.cases()} == {1, 8}
    assert gpu.target in gpu.cases()
    with pytest.raises(BenchSettingsError, match="CPU runs are float32"):
        BenchSettings(dtype="float16")
    with pytest.raises(BenchSettingsError, match="do not run on cpu"):
        run_bench(BenchSettings(contenders=("polynl-cuda-fused-kernel",), progress=False))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_run_without_a_gpu_is_refused(tmp_path):
    with pytest.raises(BenchSettingsError, match="needs a CUDA GPU"):
        run_bench(BenchSettings.preset_named("gpu", output_dir=tmp_path))


def _gpu_result(latencies: dict[str, dict[int, float]], dtype: str = "float16"):
    from polynl_deploy.bench.settings import BenchResult

    result = BenchResult(BenchSettings(device="cuda", dtype=dtype), {})
    for contender, by_channels in latencies.items():
        for channels, median_ms in by_channels.items():
            for positions, scale in ((64 ** 2, 0.25), (128 ** 2, 1.0)):
                result.measurements.append(Measurement(contender, "polynl", "cuda", "maps", 1, channels,
                                                       channels // 2, positions, "ok", median_ms=median_ms * scale,
                                                       device="cuda", dtype=dtype))
    result.fits = fit_all(result.measurements)
    return result


def test_gpu_targets_compare_the_fused_kernel_with_the_bandwidth_floor_and_eager():
    from polynl_deploy.bench.analysis import evaluate_gpu_targets

    result = _gpu_result({"floor-bandwidth": {64: 0.008, 512: 0.060},
                          "polynl-cuda-fused-kernel": {64: 0.010, 512: 0.120},
                          "polynl-naive-eager": {64: 0.050, 512: 0.200},
                          "floor-torch": {512: 0.100}})
    checks = evaluate_gpu_targets(result, Case("maps", 1, 64, 128 ** 2))
    by_figure = {t.description: t for t in checks}
    at_64 = by_figure["bandwidth floor / fused float16 kernel at C=64"]
    assert at_64.value == pytest.approx(0.8) and at_64.met
    at_512 = by_figure["bandwidth floor / fused float16 kernel at C=512"]
    assert at_512.value == pytest.approx(0.5) and at_512.met is False
    assert "two GEMMs alone (torch/cuBLAS) take 100.0 us, so at most 60% is reachable" in at_512.basis
    speedup = by_figure["naive eager / fused float16 kernel (same GPU)"]
    assert speedup.value == pytest.approx(5.0) and speedup.met
    exponent = by_figure["scaling exponent in N of the fused kernel"]
    assert exponent.value == pytest.approx(1.0) and exponent.met


def test_gpu_targets_say_when_the_run_is_not_float16_or_a_contender_is_missing():
    from polynl_deploy.bench.analysis import evaluate_gpu_targets

    result = _gpu_result({"floor-bandwidth": {256: 0.02}, "polynl-naive-eager": {256: 0.5}}, dtype="float32")
    checks = evaluate_gpu_targets(result, Case("maps", 1, 256, 128 ** 2))
    assert all(t.met is None and t.value is None for t in checks)
    assert "stated for float16" in checks[0].basis and "polynl-cuda-fused-kernel not measured" in checks[0].basis


@pytest.mark.gpu
def test_gpu_sweep_times_the_fused_kernel_against_eager_and_the_floors(tmp_path):
    settings = BenchSettings.preset_named("gpu", map_sides=(16, 32), token_lengths=(256,), channels=(64,),
                                          batches=(1, 2), repeats=5, warmup=1, target=Case("maps", 1, 64, 32 ** 2),
                                          contenders=("polynl-naive-eager", "polynl-folded-eager",
                                                      "polynl-cuda-fused-kernel", "floor-torch", "floor-bandwidth"),
                                          output_dir=tmp_path, progress=False)
    result = run_bench(settings)
    assert {m.status for m in result.measurements} == {"ok"}, [m.reason for m in result.measurements]
    fused = [m for m in result.measurements if m.contender == "polynl-cuda-fused-kernel"]
    assert all(m.device == "cuda" and m.dtype == "float16" and m.max_abs_error < 0.05 for m in fused)
    assert {t.key for t in result.targets} == {"d", "e", "f"} and all(t.value is not None for t in result.targets)


MODEL_SETTINGS = dict(map_sides=(), channels=(), repeats=2, warmup=0, target=None, progress=False,
                      plots=False, models=("polynl-marks-small", "polynl-tokens-small"))


def test_zoo_models_run_on_every_backend_of_the_device(tmp_path):
    from rich.console import Console

    from polynl_deploy.bench.report import render

    result = run_bench(BenchSettings(output_dir=tmp_path, **MODEL_SETTINGS))
    assert [m.model for m in result.models] == list(MODEL_SETTINGS["models"])
    for m in result.models:
        assert m.status == "ok" and m.device == "cpu" and list(m.backends) == ["eager", "onnxruntime"]
        eager, ort = m.backends["eager"], m.backends["onnxruntime"]
        assert eager.max_abs_error is None and ort.max_abs_error < 1e-4
        assert ort.eager_over == pytest.approx(eager.median_ms / ort.median_ms)
    assert "tensorrt not timed: TensorRT runs on a GPU: time it in a cuda run" in result.models_note
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["models"][0]["backends"]["onnxruntime"]["status"] == "ok"
    console = Console(record=True, width=250)
    render(result, console)
    printed = console.export_text()
    assert "polynl-marks-small" in printed and "eager/ORT" in printed


def test_a_failing_model_backend_is_reported_and_the_others_go_on(tmp_path, monkeypatch):
    from polynl_deploy.bench import models

    def broken(work):
        raise RuntimeError(f"cannot build {work.name}")

    monkeypatch.setattr(models, "MODEL_BACKENDS", (models.MODEL_BACKENDS[0], models.ModelBackend("broken", broken),
                                                   *models.MODEL_BACKENDS[1:]))
    result = run_bench(BenchSettings(output_dir=tmp_path, **{**MODEL_SETTINGS, "models": ("polynl-marks-small",)}))
    (record,) = result.models
    assert record.status == "ok"
    assert record.backends["broken"].status == "failed"
    assert record.backends["broken"].reason == "RuntimeError: cannot build polynl-marks-small"
    assert record.backends["onnxruntime"].status == "ok"


@pytest.mark.gpu
def test_zoo_models_on_cuda_match_eager(tmp_path):
    """eager on the GPU, and ONNX Runtime's CUDA provider and TensorRT where this machine has them."""
    result = run_bench(BenchSettings(output_dir=tmp_path, device="cuda", **{**MODEL_SETTINGS,
                                                                          "models": ("polynl-resnet-small",)}))
    (record,) = result.models
    assert record.status == "ok" and record.device == "cuda", record.reason
    from polynl_deploy.features import detect
    expected = ["eager"] + ["onnxruntime"] * detect().ort_cuda + ["tensorrt"] * (detect().tensorrt_runtime
                                                                              and detect().plugin_library is not None)
    assert list(record.backends) == expected
    for name in expected[1:]:
        timing = record.backends[name]
        assert timing.status == "ok" and timing.max_abs_error < 1e-3, (name, timing)


def test_cli_times_chosen_zoo_models_without_the_layer_sweep(tmp_path):
    from conftest import run_cli

    result = run_cli("bench", "--no-layers", "--model", "polynl-marks-small", "--repeats", "2", "--warmup", "0",
                     "--no-plots", "--output-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["measurements"] == [] and [m["model"] for m in document["models"]] == ["polynl-marks-small"]
    assert "zoo models end to end" in result.stdout
    refused = run_cli("bench", "--no-layers", "--model", "no-such-model", "--output-dir", tmp_path / "x")
    assert refused.returncode != 0 and "unknown zoo model(s) ['no-such-model']" in refused.stderr
    refused = run_cli("bench", "--targets", "--rounds", "0", "--output-dir", tmp_path / "x")
    assert refused.returncode != 0 and "rounds >= 1" in refused.stderr
    assert not (tmp_path / "x").exists()


def test_rounds_pool_every_call_and_keep_the_best_round(tmp_path):
    settings = BenchSettings(map_sides=(4, 8), channels=(8,), repeats=2, warmup=0, rounds=3, progress=False,
                             contenders=("polynl-naive-eager", "polynl-ort-custom-op", "floor-torch", "floor-ort",
                                         "nonlocal-dot-product-eager"),
                             target=Case("maps", 1, 8, 64), output_dir=tmp_path, plots=False)
    result = run_bench(settings)
    for m in result.measurements:
        assert m.status == "ok" and m.rounds == 3 and m.repeats == 6, m
        assert m.min_ms <= m.best_round_ms <= m.worst_round_ms <= m.max_ms
        assert m.latency_ms == m.best_round_ms
    (b,) = [t for t in result.targets if t.key == "b"]
    naive, ort = (result.ok(name, settings.target) for name in ("polynl-naive-eager", "polynl-ort-custom-op"))
    assert b.value == pytest.approx(naive.best_round_ms / ort.best_round_ms)
    assert "best of 3 round medians" in b.basis
    with pytest.raises(BenchSettingsError, match="rounds >= 1"):
        BenchSettings(rounds=0)


def test_a_contender_failing_in_a_later_round_is_reported_failed(tmp_path, monkeypatch):
    from dataclasses import replace as dc_replace

    from polynl_deploy.bench import contenders

    def flaky(work):
        calls = []

        def call():
            calls.append(1)
            if len(calls) > 3:  # the prepare call and the first round's two
                raise RuntimeError("device lost")
            return torch.zeros(1)
        return call

    floor = next(c for c in contenders.CONTENDERS if c.name == "floor-torch")
    monkeypatch.setattr(contenders, "CONTENDERS", tuple(dc_replace(c, prepare=flaky) if c is floor else c
                                                        for c in contenders.CONTENDERS))
    result = run_bench(BenchSettings(map_sides=(4,), channels=(8,), repeats=2, warmup=0, rounds=2, progress=False,
                                     contenders=("polynl-naive-eager", "floor-torch"), target=None,
                                     output_dir=tmp_path, plots=False))
    statuses = {m.contender: (m.status, m.reason) for m in result.measurements}
    assert statuses == {"polynl-naive-eager": ("ok", ""), "floor-torch": ("failed", "RuntimeError: device lost")}
