"""The layers against the independent NumPy float64 reference, both forms, both layouts."""

import numpy as np
import pytest
import torch

import numpy_reference as ref
from conftest import randomize
from polynl_deploy.nn import NonLocal2d, PolyNL2d, PolyNLTokens
from polynl_deploy.nn import functional as F


@pytest.mark.parametrize("impl", ["naive", "folded"])
@pytest.mark.parametrize("channels,reduction,bias,norm,shape", [
    (12, 2, True, True, (2, 12, 5, 7)),
    (13, 3, True, False, (1, 13, 9, 4)),   # C not a multiple of 8, H != W
    (16, 4, False, True, (3, 16, 6, 6)),   # no biases, C' = C/4 (unfolded under "auto")
])
def test_polynl2d_matches_float64_reference(impl, channels, reduction, bias, norm, shape):
    block = randomize(PolyNL2d(channels, reduction, bias=bias, norm=norm, impl=impl).double())
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = ref.polynl2d(x.numpy(), block)
    with torch.no_grad():
        actual = block(x).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("impl", ["naive", "folded"])
@pytest.mark.parametrize("norm", [False, True])
def test_polynl_tokens_matches_float64_reference(impl, norm):
    block = randomize(PolyNLTokens(10, 2, norm=norm, impl=impl).double(), seed=5)
    x = torch.randn(2, 17, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        actual = block(x).numpy()
    np.testing.assert_allclose(actual, ref.polynl(x.numpy(), **ref.block_weights(block)), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("block_cls,shape", [(PolyNL2d, (2, 24, 16, 16)), (PolyNLTokens, (2, 256, 24))])
def test_forms_agree_in_float32(block_cls, shape):
    block = randomize(block_cls(24), seed=7)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(8))
    expected = ref.polynl2d(x.numpy(), block) if block_cls is PolyNL2d else ref.polynl(
        x.numpy(), **ref.block_weights(block))
    with torch.no_grad():
        block.impl = "naive"
        naive = block(x).numpy()
        block.impl = "folded"
        folded = block(x).numpy()
    scale = np.abs(expected).max()
    np.testing.assert_allclose(naive, expected, atol=2e-5 * scale, rtol=1e-4)
    np.testing.assert_allclose(folded, expected, atol=2e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("block_cls,shape", [(PolyNL2d, (1, 8, 64, 64)), (PolyNLTokens, (1, 4096, 8))])
def test_folded_form_keeps_low_precision_statistics_in_float32(block_cls, shape, dtype, tolerance):
    """At std 6 and N = 4096 the Gram sum N S reaches about 1.5e5, beyond float16's 65504: the folded
    form must accumulate S in float32 (polynl-math.md) and still match the float64 reference."""
    block = randomize(block_cls(8, norm=False, impl="folded"), seed=15).to(dtype)
    x = (6 * torch.randn(*shape, generator=torch.Generator().manual_seed(16))).to(dtype)
    wide = block.double()
    expected = ref.polynl2d(x.double().numpy(), wide) if block_cls is PolyNL2d else ref.polynl(
        x.double().numpy(), **ref.block_weights(wide))
    with torch.no_grad():
        actual = block.to(dtype)(x)
    assert actual.dtype == dtype
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual.double().numpy(), expected, atol=tolerance * scale, rtol=tolerance)


def test_auto_picks_unfolded_only_for_small_inner_width():
    assert PolyNL2d(64, reduction=2).resolved_impl() == "folded"
    assert PolyNL2d(64, reduction=4).resolved_impl() == "naive"
    assert F.prefers_unfolded(64, 16) and not F.prefers_unfolded(64, 17)


def test_folded_weights_fold_norm_and_beta():
    block = randomize(PolyNL2d(8).double(), seed=9)
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    w = block.folded_weights()
    tokens = x.flatten(2).transpose(1, 2)
    folded = float(block.alpha.detach()) * tokens + F.naive(tokens, *w.values())
    with torch.no_grad():
        expected = block(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(folded, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["naive", "folded"])
def test_training_path_is_differentiable(impl):
    block = PolyNL2d(6, 2, impl=impl).double().train()
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: block(t), (x,), eps=1e-6, atol=1e-5)
    block(x).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())


def test_train_mode_forms_agree_with_batchnorm_batch_statistics():
    torch.manual_seed(0)
    naive = PolyNL2d(8, impl="naive").double().train()
    folded = PolyNL2d(8, impl="folded").double().train()
    folded.load_state_dict(naive.state_dict())
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(naive(x), folded(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", ["embedded_gaussian", "dot_product"])
def test_nonlocal_matches_reference(mode):
    block = randomize(NonLocal2d(8, mode=mode).double(), seed=11)
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        np.testing.assert_allclose(block(x).numpy(), ref.nonlocal2d(x.numpy(), block), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("make,shape", [
    (lambda: PolyNL2d(8), (2, 9, 4, 4)), (lambda: PolyNLTokens(8), (2, 4, 9)), (lambda: NonLocal2d(8), (8, 4, 4)),
])
def test_wrong_input_shape_is_named(make, shape):
    with pytest.raises(ValueError, match=r"expects .*got"):
        make()(torch.randn(*shape))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="impl"):
        PolyNL2d(8, impl="fast")
    with pytest.raises(ValueError, match="reduction"):
        PolyNL2d(2, reduction=4)


def test_auto_takes_the_naive_form_for_calls_with_few_positions(monkeypatch):
    """The folded form's C x C algebra (~4 C^2 C' flops, any N) makes it the costlier one at small N:
    with C' = C/2 the switch is at N = 2C."""
    block = PolyNLTokens(256)
    assert [block.resolved_impl(n) for n in (None, 511, 512)] == ["folded", "naive", "folded"]
    assert not F.folded_costs_more(1024, 512, 2048) and F.folded_costs_more(1024, 512, 2047)
    assert PolyNL2d(64, reduction=4).resolved_impl(10 ** 6) == "naive"  # C' <= C/4 whatever N
    calls, original = [], F.folded
    monkeypatch.setattr(F, "folded", lambda *args, **kwargs: calls.append("folded") or original(*args, **kwargs))
    with torch.no_grad():
        block.eval()(torch.randn(1, 100, 256))
        block(torch.randn(1, 600, 256))
    assert calls == ["folded"]  # N = 100 ran naive, N = 600 folded
