"""Small zoo models export in both modes, and ONNX Runtime reproduces eager PyTorch."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

import polynl_deploy
from polynl_deploy import defaults
from polynl_models import registry

SMALL_MODELS = ["polynl-resnet-small", "resnet-small-baseline", "polynl-tokens-small",
                "polynl-marks-small", "marks-small-baseline"]
FP32 = defaults.TOLERANCES["float32"]


def eager_and_onnxruntime(model: torch.nn.Module, path, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        expected = model(images).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    return expected, actual


@pytest.mark.parametrize("mode", ["custom-op", "standard-ops"])
@pytest.mark.parametrize("name", SMALL_MODELS)
def test_small_zoo_model_exports_and_matches_eager(name, mode, tmp_path):
    spec = registry.get_spec(name)
    torch.manual_seed(0)
    model = (registry.load_pretrained(name) if spec.checkpoint else registry.build_model(name)).eval()
    path = tmp_path / f"{name}.onnx"
    result = polynl_deploy.export_onnx(model, (spec.example_input(batch=2),), path, dynamic=True, mode=mode)
    blocks = sum(isinstance(m, (polynl_deploy.nn.PolyNL2d, polynl_deploy.nn.PolyNLTokens)) for m in model.modules())
    assert len(result.blocks) == blocks
    for batch in (2, 5):  # the export batch and another one through the dynamic batch axis
        expected, actual = eager_and_onnxruntime(model, path, spec.example_input(batch=batch, seed=batch))
        np.testing.assert_allclose(actual, expected, atol=FP32["atol"], rtol=FP32["rtol"])


@pytest.mark.parametrize("name, shape", [("polynl-resnet-small", ["batch", 3, "height", "width"]),
                                         ("polynl-tokens-small", ["batch", 3, 32, 32])])
def test_exported_input_axes_follow_the_model(name, shape, tmp_path):
    """The token model's position table fixes H and W (its ``onnx_dynamic_axes``): only the batch is dynamic."""
    result = polynl_deploy.export_onnx(registry.build_model(name).eval(), (registry.get_spec(name).example_input(),),
                                       tmp_path / "m.onnx")
    assert result.inputs[0]["shape"] == shape
