"""BuildSettings and optimization profiles: pure Python, no TensorRT."""

import pytest

from polynl_deploy.backends.base import TensorSpec
from polynl_deploy.tensorrt.profiles import derive_profile, derive_profiles
from polynl_deploy.tensorrt.settings import BuildSettings, BuildSettingsError, ShapeOverride

MAPS = TensorSpec("x", "float32", ("batch", 3, "height", "width"))
TOKENS = TensorSpec("x", "float32", ("batch", "tokens", 10))


def test_defaults_min_one_opt_example_max_twice():
    profile = derive_profile(MAPS, [2, 3, 10, 14])
    assert (profile.min, profile.opt, profile.max) == ((1, 3, 1, 1), (2, 3, 10, 14), (4, 3, 20, 28))


def test_max_scale_is_settable_and_rounds_up():
    profile = derive_profile(TOKENS, [3, 9, 10], max_scale=2.5)
    assert profile.max == (8, 23, 10)


def test_fixed_inputs_get_one_shape():
    profile = derive_profile(TensorSpec("w", "float32", (4, 5)), [4, 5])
    assert profile.min == profile.opt == profile.max == (4, 5)


def test_overrides_replace_defaults_and_widen_the_others():
    profile = derive_profile(MAPS, [2, 3, 10, 14], override=ShapeOverride(opt=(8, 3, 64, 64)))
    assert profile.opt == (8, 3, 64, 64)
    assert profile.max == (8, 3, 64, 64)   # the default max (4, 3, 20, 28) widened to contain opt
    assert profile.min == (1, 3, 1, 1)
    profile = derive_profile(MAPS, [2, 3, 10, 14], override=ShapeOverride(max=(1, 3, 8, 8)))
    assert profile.opt == (1, 3, 8, 8) and profile.max == (1, 3, 8, 8)


@pytest.mark.parametrize("override, message", [
    (ShapeOverride(min=(1, 4, 8, 8)), "fixed dims must match"),
    (ShapeOverride(max=(1, 3, 8)), "does not fit"),
    (ShapeOverride(min=(2, 3, 8, 8), opt=(1, 3, 8, 8)), "min <= opt <= max"),
])
def test_bad_overrides_are_refused(override, message):
    with pytest.raises(BuildSettingsError, match=message):
        derive_profile(MAPS, [2, 3, 10, 14], override=override)


def test_override_for_unknown_input_names_the_inputs():
    with pytest.raises(BuildSettingsError, match=r"unknown inputs \['y'\].*\['x'\]"):
        derive_profiles([MAPS], [[2, 3, 10, 14]], overrides={"y": ShapeOverride(opt=(1, 3, 8, 8))})


def test_profiles_from_an_exported_file(exported_maps):
    from polynl_deploy.tensorrt.profiles import profiles_for_onnx

    (profile,) = profiles_for_onnx(exported_maps)
    assert (profile.input, profile.opt, profile.max) == ("x", (2, 3, 10, 14), (4, 3, 20, 28))


@pytest.fixture(scope="module")
def exported_maps(tmp_path_factory):
    import torch

    from fixture_models import TwoBlockNet, two_block_net
    from polynl_deploy.export.exporter import export_onnx

    path = tmp_path_factory.mktemp("profiles") / "two_block.onnx"
    export_onnx(two_block_net(), torch.randn(*TwoBlockNet.default_input_shape), path)
    return path


@pytest.mark.parametrize("kwargs, message", [
    ({"target": "tensorrt"}, "target must be one of"),
    ({"precision": "int8"}, "precision must be one of"),
    ({"keep_io_fp32": True}, "only applies to fp16/bf16"),
    ({"target": "rtx", "sms": (90,)}, r"targets SMs \[75, 80, 86, 89, 120, 121\]"),
    ({"target": "rtx", "plugin_library": "libx.so"}, "plugin-free"),
    ({"workspace_bytes": 0}, "workspace must be positive"),
    ({"max_scale": 0.5}, "max_scale must be >= 1"),
])
def test_settings_are_checked(kwargs, message):
    with pytest.raises(BuildSettingsError, match=message):
        BuildSettings("m.onnx", "m.plan", **kwargs)


def test_sidecar_sits_next_to_the_plan():
    settings = BuildSettings("m.onnx", "out/m.plan", target="rtx", sms=[89, 120])
    assert str(settings.sidecar_path) == "out/m.plan.json" and settings.sms == (89, 120)


def test_unnamed_shapes_belong_to_the_only_input_in_the_library_too():
    """A shape without INPUT: (as the CLI takes it) names the model's only input; with several inputs, or
    given twice, it is refused, whoever calls derive_profiles."""
    from polynl_deploy.tensorrt.profiles import derive_profiles
    from polynl_deploy.tensorrt.settings import BuildSettingsError, ShapeOverride

    one = [TensorSpec("x", "float32", (None, 3, None, None))]
    profile, = derive_profiles(one, [(2, 3, 8, 8)], overrides={"": ShapeOverride(max=(4, 3, 16, 16)),
                                                               "x": ShapeOverride(min=(1, 3, 4, 4))})
    assert (profile.input, profile.min, profile.max) == ("x", (1, 3, 4, 4), (4, 3, 16, 16))
    with pytest.raises(BuildSettingsError, match="given twice"):
        derive_profiles(one, [(2, 3, 8, 8)], overrides={"": ShapeOverride(max=(4, 3, 16, 16)),
                                                         "x": ShapeOverride(max=(4, 3, 16, 16))})
    two = [*one, TensorSpec("y", "float32", (None, 3))]
    with pytest.raises(BuildSettingsError, match="write shapes as INPUT:"):
        derive_profiles(two, [(2, 3, 8, 8), (2, 3)], overrides={"": ShapeOverride(max=(4, 3, 16, 16))})
