"""polynl_deploy.kernels without a built library: descriptors from tensors, and the errors it names."""

import pytest
import torch

from polynl_deploy import contract
from polynl_deploy.errors import KernelError
from polynl_deploy.kernels import DTYPES, LAYOUTS, PATHS, KernelLibrary, describe


def weights(channels=12, inner=5, dtype=torch.float32):
    shapes = [(channels, inner), (inner,)] * 3 + [(inner, channels), (channels,)]
    return {name: torch.zeros(shape, dtype=dtype) for name, shape in zip(contract.INPUT_NAMES[1:], shapes)}


def test_descriptor_of_maps_and_tokens():
    desc = describe(torch.zeros(3, 12, 4, 5, dtype=torch.float16), weights(dtype=torch.float32), "maps", 0.5,
                    "folded")
    assert (desc.batch, desc.channels, desc.inner, desc.positions) == (3, 12, 5, 20)
    assert (desc.layout, desc.x_dtype, desc.weight_dtype, desc.path) == (
        LAYOUTS["maps"], DTYPES["float16"], DTYPES["float32"], PATHS["folded"])
    assert desc.alpha == 0.5
    tokens = describe(torch.zeros(2, 7, 12, dtype=torch.bfloat16), weights(dtype=torch.bfloat16), "tokens", 1.0,
                      "auto")
    assert (tokens.batch, tokens.positions, tokens.channels, tokens.layout) == (2, 7, 12, LAYOUTS["tokens"])


@pytest.mark.parametrize("x, w, layout, path, message", [
    (torch.zeros(1, 12, 4, 4), weights(), "rows", "auto", "layout must be one of"),
    (torch.zeros(1, 12, 4, 4), weights(), "maps", "fastest", "path must be one of"),
    (torch.zeros(1, 12, 16), weights(), "maps", "auto", "maps layout needs X of shape (B, C, H, W)"),
    (torch.zeros(1, 12, 4, 4), weights(), "tokens", "auto", "tokens layout needs X of shape (B, N, C)"),
    (torch.zeros(1, 12, 4, 4, dtype=torch.float64), weights(), "maps", "auto", "X has dtype float64"),
    (torch.zeros(1, 12, 4, 4), {**weights(), "bo": torch.zeros(12, dtype=torch.float16)}, "maps", "auto",
     "all weights must share one dtype"),
    (torch.zeros(1, 12, 4, 4), {k: v for k, v in weights().items() if k != "Wv"}, "maps", "auto", "lack ['Wv']"),
    (torch.zeros(1, 64, 4, 4), weights(), "maps", "auto", "'Wq': (12, 5)"),  # weights of another block
    (torch.zeros(1, 12, 4), weights(), "tokens", "auto", "(tokens, C=4)"),
    (torch.zeros(1, 12, 4, 4), {**weights(), "Wo": torch.zeros(5, 11)}, "maps", "auto", "{'Wo': (5, 11)}"),
    (torch.zeros(1, 12, 4, 4), {**weights(), "bk": torch.zeros(4)}, "maps", "auto", "{'bk': (4,)}"),
    (torch.zeros(1, 12, 4, 4), {**weights(), "Wq": torch.zeros(12, 5, 1)}, "maps", "auto", "'Wq': (12, 5, 1)"),
    (torch.zeros(1, 12, 4, 4, device="meta"), weights(), "maps", "auto", "not on X's device meta"),
])
def test_descriptor_errors_name_the_problem(x, w, layout, path, message):
    with pytest.raises(KernelError) as caught:
        describe(x, w, layout, 1.0, path)
    assert message in str(caught.value)


def test_missing_library_is_a_kernel_error(tmp_path):
    with pytest.raises(KernelError, match="cannot load the kernel library"):
        KernelLibrary(tmp_path / "libpolynl_kernels.so")


def test_built_libraries_are_found_where_the_plugins_readme_builds_them(tmp_path, monkeypatch):
    """$ENV first, then build/plugins (plugins/README.md's cmake -B), plugins/build and build/ of the checkout."""
    from polynl_deploy import features

    monkeypatch.setattr(features, "__file__", str(tmp_path / "polynl_deploy" / "features.py"))
    monkeypatch.delenv("POLYNL_TEST_LIBRARY", raising=False)
    assert features.find_built_library("POLYNL_TEST_LIBRARY", "libx.so") is None
    for folder in ("build", "plugins/build", "build/plugins"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "libx.so").write_bytes(b"")
        assert features.find_built_library("POLYNL_TEST_LIBRARY", "libx.so") == tmp_path / folder / "libx.so"
    chosen = tmp_path / "elsewhere.so"
    chosen.write_bytes(b"")
    monkeypatch.setenv("POLYNL_TEST_LIBRARY", str(chosen))
    assert features.find_built_library("POLYNL_TEST_LIBRARY", "libx.so") == chosen
