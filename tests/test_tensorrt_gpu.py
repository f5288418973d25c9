"""Full TensorRT with the PolyNL plugin on a GPU: build, run, and eager/ORT/TensorRT parity."""

import numpy as np
import pytest
import torch

from fixture_models import TokenNet, TwoBlockNet, token_net, two_block_net
from polynl_deploy import defaults
from polynl_deploy.export.exporter import export_onnx
from polynl_deploy.tensorrt.builder import GRAPH_PLUGIN, build_engine
from polynl_deploy.tensorrt.settings import BuildSettings

MODELS = {"maps": (two_block_net, TwoBlockNet.default_input_shape),
          "tokens": (token_net, TokenNet.default_input_shape)}


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, tmp_path_factory):
    factory, shape = MODELS[request.param]
    model = factory()
    path = tmp_path_factory.mktemp("trt") / f"{request.param}.onnx"
    export_onnx(model, torch.randn(*shape), path)
    return path, model


@pytest.mark.tensorrt
def test_plugin_engine_matches_eager_and_ort(exported, tmp_path):
    from polynl_deploy.tensorrt.runner import TensorRTRunner
    from polynl_deploy.validation import compare_runners, make_runner

    onnx_path, model = exported
    plan = tmp_path / "model.plan"
    result = build_engine(BuildSettings(onnx_path, plan, target="trt", timing_cache=tmp_path / "timing.cache"))
    assert result.metadata["graph"] == GRAPH_PLUGIN and result.metadata["plugin_library_sha256"]
    assert (tmp_path / "timing.cache").stat().st_size > 0
    runners = {"eager": make_runner("eager", onnx_path, model), "ort": make_runner("ort", onnx_path),
               "trt": TensorRTRunner(plan)}
    report = compare_runners(onnx_path, runners)
    report.raise_for_failure()


@pytest.mark.tensorrt
def test_version_compatible_engine_carries_the_plugin(exported, tmp_path):
    """The plan holds the plugin library and a lean runtime: it runs with nothing loaded beforehand."""
    from polynl_deploy.tensorrt.runner import TensorRTRunner
    from polynl_deploy.validation import compare_runners, make_runner

    onnx_path, model = exported
    plan = tmp_path / "model.plan"
    result = build_engine(BuildSettings(onnx_path, plan, target="trt", version_compatible=True))
    meta = result.metadata
    assert meta["version_compatible"] and meta["plugin_library_serialized"] and meta["lean_runtime_embedded"]
    plain = build_engine(BuildSettings(onnx_path, tmp_path / "plain.plan", target="trt"))
    assert result.engine_bytes > plain.engine_bytes  # the library and the lean runtime are inside
    runners = {"eager": make_runner("eager", onnx_path, model), "trt": TensorRTRunner(plan)}
    compare_runners(onnx_path, runners).raise_for_failure()


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_engine_is_close_to_eager(exported, tmp_path, precision):
    from polynl_deploy.tensorrt.runner import TensorRTRunner
    from polynl_deploy.validation import model_input_specs

    onnx_path, model = exported
    plan = tmp_path / f"{precision}.plan"
    build_engine(BuildSettings(onnx_path, plan, precision=precision, keep_io_fp32=True))
    _, _, (example,) = model_input_specs(onnx_path)
    x = np.random.default_rng(0).standard_normal(example).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    actual = TensorRTRunner(plan).infer({"x": x})["output"]
    # Every activation is rounded to fp16/bf16: the error follows the activations' scale, so it is bounded
    # by the dtype's rtol times the largest output (as tests/test_tensorrt_precision.py checks the files).
    rtol = defaults.TOLERANCES["float16" if precision == "fp16" else "bfloat16"]["rtol"]
    error = np.abs(actual - expected).max()
    assert error <= rtol * np.abs(expected).max(), f"max abs error {error:.3g}"


@pytest.mark.gpu
@pytest.mark.tensorrt_rtx
def test_rtx_engine_runs_when_the_rtx_runtime_has_a_gpu(exported, tmp_path):
    from polynl_deploy.tensorrt.runner import TensorRTRunner

    onnx_path, model = exported
    major, minor = torch.cuda.get_device_capability(0)
    sm = major * 10 + minor
    from polynl_deploy.tensorrt.settings import RTX_SMS
    if sm not in RTX_SMS:
        pytest.skip(f"TensorRT for RTX does not target SM{sm}")
    plan = tmp_path / "rtx.plan"
    build_engine(BuildSettings(onnx_path, plan, target="rtx", sms=(sm,)))
    runner = TensorRTRunner(plan)
    shape = [d if isinstance(d, int) else 2 for d in runner.input_specs[0].shape]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    fp32 = defaults.TOLERANCES["float32"]  # TF32 is off unless --tf32
    np.testing.assert_allclose(runner.infer({"x": x})["output"], expected, atol=fp32["atol"], rtol=fp32["rtol"])
