"""`polynl demo`, the README's main job, end to end as a user runs it."""

import json

import onnx

from conftest import run_cli
from polynl_deploy import defaults


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--output-dir", out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED" in result.stdout
    assert {p.name for p in out.iterdir()} == {"model.onnx", "inspect.json", "report.json", "inputs.npz"}

    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is True
    assert report["backends"][:2] == ["eager", "ort"]
    assert report["accuracy"]["ort"] == report["accuracy"]["eager"]
    assert report["label_agreement"]["ort"] >= defaults.LABEL_AGREEMENT_MIN
    assert all(c["passed"] and c["max_abs_error"] < 1e-4 for c in report["comparisons"])
    assert set(report["skipped"]) | set(report["backends"]) >= {"eager", "ort", "trt"}

    from polynl_models.registry import checkpoint_metadata
    recorded = checkpoint_metadata(defaults.DEMO_MODEL)["models"][defaults.DEMO_MODEL]["held_out_accuracy"]
    assert abs(report["accuracy"]["eager"] - recorded) <= 0.005  # see test_models_pretrained for the slack
    inspect = json.loads((out / "inspect.json").read_text())
    assert inspect["plugin_ready"] is True and len(inspect["polynl_nodes"]) >= 1
    onnx.checker.check_model(str(out / "model.onnx"))


def test_demo_unknown_model_suggests_names(tmp_path):
    result = run_cli("demo", "--model", "polynl-marks-smal", "--output-dir", tmp_path / "x")
    assert result.returncode == 2
    assert "polynl-marks-small" in result.stderr
