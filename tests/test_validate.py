"""validate(): comparisons, tolerances, failure detection, input reproducibility, runner input checks."""

import json
import math

import numpy as np
import onnx
import pytest
import torch

import fixture_models
from polynl_deploy import export_onnx, validate
from polynl_deploy.backends.onnxruntime_backend import OnnxRuntimeRunner
from polynl_deploy.backends.torch_backend import TorchRunner
from polynl_deploy.errors import InputError, SettingsError, ValidationError
from polynl_deploy.validation import (Tolerance, Tolerances, compare, load_inputs, model_input_specs, save_inputs,
                                      validation_shapes)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = fixture_models.two_block_net()
    path = tmp_path_factory.mktemp("validate") / "m.onnx"
    export_onnx(model, torch.randn(2, 3, 10, 14), path)
    return model, path


def test_compare_statistics():
    ref = np.array([1.0, -2.0, 0.0, 4.0], np.float32)
    act = np.array([1.1, -2.0, 0.0, 4.0], np.float32)
    stats = compare(ref, act, Tolerance(atol=1e-5, rtol=1e-4))
    assert not stats["passed"]
    assert stats["max_abs_error"] == pytest.approx(0.1, rel=1e-5)
    assert stats["max_rel_error"] == pytest.approx(0.1, rel=1e-5)
    assert stats["min_atol_to_pass"] == pytest.approx(0.1 - 1e-4, rel=1e-4)
    assert stats["min_rtol_to_pass"] == pytest.approx(0.1 - 1e-5, rel=1e-4)
    # the reported minimum tolerances are sufficient
    assert compare(ref, act, Tolerance(stats["min_atol_to_pass"] * 1.001, 1e-4))["passed"]
    assert compare(ref, act, Tolerance(1e-5, stats["min_rtol_to_pass"] * 1.001))["passed"]


def test_compare_flags_nan_inf_and_shape_mismatch():
    ref = np.ones(4, np.float32)
    stats = compare(ref, np.array([1, np.nan, 1, 1], np.float32), Tolerance(1.0, 1.0))
    assert stats["nan_or_inf"] and not stats["passed"]
    assert not compare(ref, np.array([1, np.inf, 1, 1], np.float32), Tolerance(1.0, 1.0))["passed"]
    assert not compare(ref, np.ones(5, np.float32), Tolerance(1.0, 1.0))["passed"]


def test_tolerances_by_dtype_and_output():
    tolerances = Tolerances(per_output={"logits": Tolerance(0.5, 0.0)})
    assert tolerances.for_output("logits", "float32") == Tolerance(0.5, 0.0)
    assert tolerances.for_output("other", "float32") == Tolerance(1e-5, 1e-4)
    assert tolerances.for_output("other", "float16").atol > tolerances.for_output("other", "float32").atol


def test_validation_shapes_stay_inside_dynamic_axes(exported):
    _, path = exported
    specs, outputs, examples = model_input_specs(path)
    assert outputs == ["output"] and examples == [[2, 3, 10, 14]]
    shapes = validation_shapes(specs, examples)
    assert shapes == [{"x": [2, 3, 10, 14]}, {"x": [1, 3, 5, 7]}, {"x": [3, 3, 15, 21]}]


def test_validate_passes_and_reports(exported, tmp_path):
    model, path = exported
    report = validate(path, model)
    assert report.passed
    assert len(report.comparisons) == 3 and all(c.backend == "ort" for c in report.comparisons)
    assert all(c.max_abs_error < 1e-4 and not c.nan_or_inf for c in report.comparisons)
    report.save(tmp_path / "report.json")
    payload = json.loads((tmp_path / "report.json").read_text())
    assert payload["passed"] is True and payload["reference"] == "eager"
    assert payload["shapes"][1] == {"x": [1, 3, 5, 7]}


def test_validate_catches_a_wrong_weight(exported, tmp_path):
    model, path = exported
    proto = onnx.load(str(path))
    node = next(n for n in proto.graph.node if n.op_type == "PolyNL")
    wo = next(t for t in proto.graph.initializer if t.name == node.input[7])
    array = onnx.numpy_helper.to_array(wo).copy()
    array[0, 0] += 1e-3
    wo.CopyFrom(onnx.numpy_helper.from_array(array, wo.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    report = validate(broken, model)
    assert not report.passed
    assert any(c.min_atol_to_pass > 1e-5 for c in report.comparisons)
    with pytest.raises(ValidationError, match="ort/output"):
        report.raise_for_failure()


def test_validate_needs_two_backends_and_the_model(exported):
    _, path = exported
    with pytest.raises(SettingsError, match="needs the PyTorch model"):
        validate(path, None)
    with pytest.raises(SettingsError, match="unknown backend 'tvm'"):
        validate(path, None, backends=("ort", "tvm"))
    with pytest.raises(SettingsError, match="at least two"):
        validate(path, None, backends=("ort",))


def test_save_and_load_inputs_reproduce(exported, tmp_path):
    model, path = exported
    first = validate(path, model, seed=3)
    save_inputs(tmp_path / "inputs.npz", first.feeds)
    feeds = load_inputs(tmp_path / "inputs.npz")
    assert [f["x"].shape for f in feeds] == [f["x"].shape for f in first.feeds]
    again = validate(path, model, inputs=feeds)
    assert [c.max_abs_error for c in again.comparisons] == [c.max_abs_error for c in first.comparisons]
    with pytest.raises(InputError, match="no such inputs file"):
        load_inputs(tmp_path / "missing.npz")


def test_runners_name_wrong_inputs(exported):
    model, path = exported
    runner = OnnxRuntimeRunner(path)
    good = np.zeros((1, 3, 4, 4), np.float32)
    assert runner.infer({"x": good})["output"].shape == (1, 4, 4, 4)
    with pytest.raises(InputError, match=r"input 'x' expects shape \(batch, 3, height, width\), got \(1, 5, 4, 4\)"):
        runner.infer({"x": np.zeros((1, 5, 4, 4), np.float32)})
    with pytest.raises(InputError, match="expects dtype float32, got float64"):
        runner.infer({"x": good.astype(np.float64)})
    with pytest.raises(InputError, match=r"expected inputs \['x'\], got \['y'\]"):
        runner.infer({"y": good})
    specs, outputs, _ = model_input_specs(path)
    eager = TorchRunner(model, specs, outputs)
    with pytest.raises(InputError, match="eager: input 'x' expects shape"):
        eager.infer({"x": np.zeros((1, 3, 4), np.float32)})
    assert math.isclose(float(np.abs(eager.infer({"x": good})["output"] - runner.infer({"x": good})["output"]).max()),
                        0.0, abs_tol=1e-5)


def test_per_output_tolerance_overrides_the_global_one(exported):
    """``--tolerance OUTPUT:ATOL:RTOL``: zero global tolerances fail on round-off, the output's own pass."""
    from polynl_deploy.settings import ValidateSettings
    from polynl_deploy.workflows import run_validate

    _, path = exported
    output = onnx.load(str(path)).graph.output[0].name
    strict = ValidateSettings(path, source="fixture_models:two_block_net", atol=0.0, rtol=0.0)
    assert not run_validate(strict).passed
    relaxed = ValidateSettings(path, source="fixture_models:two_block_net", atol=0.0, rtol=0.0,
                               per_output={output: (1e-5, 1e-4)})
    report = run_validate(relaxed)
    assert report.passed and all(c.max_abs_error > 0 for c in report.comparisons)


@pytest.mark.parametrize("io_dtype", ["float16", "float32"])
def test_reduced_precision_runner_gets_its_input_types_and_tolerances(exported, io_dtype):
    """An fp16 engine (fp16 I/O, or fp32 I/O with --keep-io-fp32) is fed in its own input type and judged
    by float16 tolerances; the same error from a float32 runner fails."""
    from polynl_deploy.backends.base import Runner, TensorSpec
    from polynl_deploy.validation import compare_runners

    _model, path = exported
    reference = OnnxRuntimeRunner(path)

    class Engine(Runner):
        name = "trt"

        def __init__(self, precision):
            self.precision = precision
            self.input_specs = [TensorSpec(s.name, io_dtype, s.shape) for s in reference.input_specs]
            self.output_names = reference.output_names

        def _infer(self, feed):
            outputs = reference.infer({k: v.astype(np.float32) for k, v in feed.items()})
            return {k: (v * (1 + 2e-3)).astype(io_dtype) for k, v in outputs.items()}

    assert compare_runners(path, {"ort": reference, "trt": Engine("float16")}).passed
    assert not compare_runners(path, {"ort": reference, "trt": Engine(None)}).passed
