"""`polynl demo`, the README's main job, end to end as a user runs it."""

import dataclasses
import json

import onnx
import pytest

from conftest import run_cli
from polynl_deploy import defaults, features
from polynl_deploy.demo import ENGINE_ARTIFACTS, run_demo
from polynl_deploy.settings import DemoSettings


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


def test_demo_builds_a_plugin_engine_where_tensorrt_is_present(tmp_path, monkeypatch):
    """Full TensorRT and a GPU cannot exist here, so they are stood in for: the feature probe reports
    them, the builder records its settings and writes a plan, and the engine's runner answers through
    ONNX Runtime. Checked: the demo builds the engine for its batch size with the plugin, validates it
    as ``trt`` and lands plan and sidecar (naming the final ONNX path) with the other artifacts."""
    from polynl_deploy.backends.onnxruntime_backend import OnnxRuntimeRunner
    from polynl_deploy.tensorrt import builder, runner

    library = tmp_path / "libpolynl_trt_plugin.so"
    library.write_bytes(b"stand-in")
    stand_in = dataclasses.replace(features.detect(), tensorrt="stand-in", cuda=True, plugin_library=library)
    monkeypatch.setattr(features, "detect", lambda: stand_in)
    builds = []

    def build_engine(settings):
        builds.append(settings)
        metadata = {"target": settings.target, "onnx_path": str(settings.onnx_path)}
        settings.plan_path.write_bytes(b"plan")
        settings.sidecar_path.write_text(json.dumps(metadata))
        return builder.BuildResult(settings.plan_path, settings.sidecar_path, metadata, 4, 0.0)

    class EngineRunner(OnnxRuntimeRunner):
        name = "trt"

        def __init__(self, plan_path):
            assert plan_path == builds[-1].plan_path
            super().__init__(builds[-1].onnx_path)

    monkeypatch.setattr(builder, "build_engine", build_engine)
    monkeypatch.setattr(runner, "TensorRTRunner", EngineRunner)
    out = tmp_path / "demo"
    result = run_demo(DemoSettings(output_dir=out, batch_size=50, samples=120))

    (settings,) = builds
    assert settings.target == "trt" and settings.plan_path.name == "model.plan"
    override = settings.shape_overrides[result.export.inputs[0]["name"]]
    assert override.opt[0] == override.max[0] == 50 and override.min is None
    assert result.report.backends == ["eager", "ort", "trt"] and result.passed
    assert result.label_agreement["trt"] == 1.0 and "trt" not in result.skipped
    assert {p.name for p in out.iterdir()} >= set(ENGINE_ARTIFACTS)
    assert json.loads((out / ENGINE_ARTIFACTS[1]).read_text())["onnx_path"] == str(out / "model.onnx")


@pytest.mark.tensorrt
def test_demo_with_full_tensorrt(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--output-dir", out)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "report.json").read_text())
    assert "trt" in report["backends"] and report["passed"] is True
    assert report["label_agreement"]["trt"] >= defaults.LABEL_AGREEMENT_MIN
    assert {p.name for p in out.iterdir()} >= set(ENGINE_ARTIFACTS)
