"""ResNet-50 with five Poly-NL blocks at 224x224: export in both modes, validate on ONNX Runtime."""

import numpy as np
import onnx
import pytest
import torch

from polynl_deploy import export_onnx, validate
from polynl_models import registry


@pytest.fixture(scope="module")
def resnet50():
    model = registry.build_model("resnet50-polynl").eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-trivial norm statistics, so the five blocks change the output
        for module in model.modules():
            if type(module).__name__ == "PolyNL2d":
                norm = module.norm
                norm.weight.copy_(torch.randn(norm.weight.shape, generator=generator) * 0.5)
                norm.bias.copy_(torch.randn(norm.bias.shape, generator=generator) * 0.1)
                norm.running_var.copy_(torch.rand(norm.running_var.shape, generator=generator) + 0.5)
                module.alpha.fill_(0.9)
                module.beta.fill_(0.7)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["custom-op", "standard-ops"])
def test_resnet50_polynl_224(resnet50, tmp_path, mode):
    path = tmp_path / f"r50-{mode}.onnx"
    result = export_onnx(resnet50, torch.randn(1, 3, 224, 224), path, mode=mode)
    assert len(result.blocks) == 5
    assert {(b.channels, b.inner_channels) for b in result.blocks} == {(512, 256), (1024, 512)}
    domains = {n.domain for n in onnx.load(str(path)).graph.node}
    assert ("polynl" in domains) == (mode == "custom-op")
    report = validate(path, resnet50, scales=(1.0,))
    assert report.passed, [(c.max_abs_error, c.min_atol_to_pass) for c in report.comparisons]
    logits = report.outputs["eager"][0]["output"]
    assert logits.shape == (1, 1000) and np.isfinite(logits).all() and np.std(logits) > 1e-3
