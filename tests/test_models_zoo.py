"""The model zoo: every model builds and runs, parameter counts, block placement, registry errors."""

import pytest
import torch
from safetensors.torch import save_file

from polynl_deploy.errors import CheckpointError, SourceError
from polynl_deploy.nn import NonLocal2d, PolyNL2d, PolyNLTokens
from polynl_models import registry, resnet, tokens

RESNET50_PARAMETERS = 25_557_032
"""torchvision's resnet50 (v1.5, 1000 classes) has exactly this many parameters."""

SMALL_INPUTS = {"resnet50-polynl": (3, 64, 64), "resnet50-nonlocal": (3, 64, 64)}
"""Reduced input shapes (without batch) for models whose default input is expensive on CPU."""

REQUIRED_NAMES = {"resnet50-polynl", "resnet50-nonlocal", "polynl-resnet-small", "resnet-small-baseline",
                  "polynl-tokens-small", "polynl-marks-small", "marks-small-baseline"}


def test_registry_lists_the_zoo():
    assert set(registry.list_models()) == REQUIRED_NAMES
    assert registry.list_models() == sorted(registry.list_models())


@pytest.mark.parametrize("name", sorted(REQUIRED_NAMES))
def test_every_model_builds_and_runs(name):
    spec = registry.get_spec(name)
    torch.manual_seed(0)
    model = registry.build_model(name).eval()
    shape = SMALL_INPUTS.get(name, spec.input_shape)
    with torch.no_grad():
        logits = model(torch.randn(2, *shape))
    assert logits.dim() == 2 and logits.shape[0] == 2
    assert torch.isfinite(logits).all()
    assert spec.example_input(batch=3).shape == (3, *spec.input_shape)


def test_resnet50_backbone_has_torchvision_parameter_count():
    assert registry.parameter_count(resnet.resnet50()) == RESNET50_PARAMETERS


@pytest.mark.parametrize("name, block_type", [("resnet50-polynl", PolyNL2d), ("resnet50-nonlocal", NonLocal2d)])
def test_resnet50_variants_add_five_blocks_in_res3_and_res4(name, block_type):
    model = registry.build_model(name)
    blocks = {n: m for n, m in model.named_modules() if isinstance(m, block_type)}
    assert sorted(blocks) == ["stage2.1.extra", "stage2.3.extra", "stage3.1.extra", "stage3.3.extra",
                              "stage3.5.extra"]
    assert [b.channels for b in blocks.values()] == [512, 512, 1024, 1024, 1024]
    added = sum(registry.parameter_count(b) for b in blocks.values())
    assert registry.parameter_count(model) == RESNET50_PARAMETERS + added
    assert 7_000_000 < added < 8_000_000  # two blocks at C=512, three at C=1024, C' = C/2


def test_resnet50_block_placement_is_configurable():
    model = resnet.resnet50_polynl(num_classes=10, stages=(2, 3), blocks_per_stage=(4, 6))
    names = [n for n, m in model.named_modules() if isinstance(m, PolyNL2d)]
    assert len(names) == 10  # Wang et al.'s "10 blocks": after every bottleneck of res3 and res4
    model = resnet.resnet50_polynl(stages=(4,), blocks_per_stage=(1,))
    assert [n for n, m in model.named_modules() if isinstance(m, PolyNL2d)] == ["stage4.2.extra"]
    with pytest.raises(ValueError, match="cannot place 5 blocks"):
        resnet.resnet50_polynl(stages=(2,), blocks_per_stage=(5,))
    with pytest.raises(ValueError, match="1-based"):
        resnet.resnet50_polynl(stages=(0,), blocks_per_stage=(1,))


def test_insertion_indices_follow_every_other_block():
    assert resnet.insertion_indices(4, 2) == [1, 3]
    assert resnet.insertion_indices(6, 3) == [1, 3, 5]
    assert resnet.insertion_indices(6, 6) == list(range(6))
    assert resnet.insertion_indices(3, 0) == []


def test_zero_init_blocks_makes_inserted_blocks_start_as_identity():
    x = torch.randn(1, 512, 4, 4)
    zeroed = resnet.resnet50_polynl(zero_init_blocks=True).eval().stage2[1].extra
    torch.testing.assert_close(zeroed(x), x)
    live = resnet.resnet50_polynl().eval().stage2[1].extra
    assert not torch.allclose(live(x), x)


@pytest.mark.parametrize("polynl_name, baseline_name", [("polynl-resnet-small", "resnet-small-baseline"),
                                                         ("polynl-marks-small", "marks-small-baseline")])
def test_baseline_twin_is_the_same_network_without_blocks(polynl_name, baseline_name):
    polynl_model, baseline = registry.build_model(polynl_name), registry.build_model(baseline_name)
    polynl_keys, baseline_keys = set(polynl_model.state_dict()), set(baseline.state_dict())
    assert baseline_keys < polynl_keys
    assert all(".extra." in key for key in polynl_keys - baseline_keys)
    assert not any(isinstance(m, PolyNL2d) for m in baseline.modules())
    assert any(isinstance(m, PolyNL2d) for m in polynl_model.modules())


@pytest.mark.parametrize("name", ["polynl-resnet-small", "resnet-small-baseline", "polynl-tokens-small",
                                  "polynl-marks-small", "marks-small-baseline"])
def test_small_models_are_small(name):
    assert 10_000 <= registry.parameter_count(registry.build_model(name)) <= 500_000


def test_token_model_uses_polynl_token_blocks_and_both_position_kinds():
    model = registry.build_model("polynl-tokens-small")
    assert sum(isinstance(m, PolyNLTokens) for m in model.modules()) == 4
    fixed = tokens.polynl_tokens_small(positions="sinusoidal", num_classes=3).eval()
    assert "positions" in dict(fixed.named_buffers())
    assert fixed(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="positions"):
        tokens.polynl_tokens_small(positions="rotary")


def test_build_model_passes_overrides_to_the_factory():
    model = registry.build_model("polynl-resnet-small", num_classes=7, in_channels=1).eval()
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 7)


@pytest.mark.parametrize("typo, suggestion", [("polynl-resnet-smal", "polynl-resnet-small"),
                                              ("resnet50-polyNL", "resnet50-polynl"),
                                              ("polynl-marks", "polynl-marks-small")])
def test_unknown_name_suggests_close_names(typo, suggestion):
    with pytest.raises(SourceError, match="did you mean") as info:
        registry.get_spec(typo)
    assert suggestion in str(info.value)
    with pytest.raises(SourceError):
        registry.build_model(typo)


def test_unrelated_name_lists_known_models():
    with pytest.raises(SourceError, match="known models: .*polynl-tokens-small"):
        registry.get_spec("xyz")


def test_load_pretrained_refuses_models_without_checkpoint():
    with pytest.raises(CheckpointError, match="ships no checkpoint"):
        registry.load_pretrained("polynl-resnet-small")


def test_load_pretrained_names_missing_and_unexpected_keys(tmp_path):
    state = registry.build_model("polynl-marks-small").state_dict()
    state.pop("fc.bias")
    state["fc.extra_weight"] = torch.zeros(2)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "polynl_marks_small.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing: fc.bias; unexpected: fc.extra_weight"):
        registry.load_pretrained("polynl-marks-small", checkpoint_dir=tmp_path)


def test_load_pretrained_names_shape_mismatches(tmp_path):
    state = registry.build_model("polynl-marks-small").state_dict()
    state["fc.bias"] = torch.zeros(3)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "polynl_marks_small.safetensors"))
    with pytest.raises(CheckpointError, match=r"fc.bias \(checkpoint \(3,\), model \(2,\)\)"):
        registry.load_pretrained("polynl-marks-small", checkpoint_dir=tmp_path)


def test_load_pretrained_rejects_a_file_that_is_not_safetensors(tmp_path):
    (tmp_path / "polynl_marks_small.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        registry.load_pretrained("polynl-marks-small", checkpoint_dir=tmp_path)
