"""Poly-NL forward forms on token matrices X of shape (B, N, C), or (B, C, N) with ``channels_first``.

Weights are matrices: Wq, Wk, Wv are (C, C'), Wo is (C', C); biases are vectors.
Both forms return the pre-norm output projection P = ((X Wq + bq) * m) Wo + bo in the layout of X.
"""

import torch
from torch import Tensor

from polynl_deploy.contract import LAYOUT_TOKENS
from polynl_deploy.defaults import (BODY_GRAM_BLOCKS, BODY_UNFOLDED_TOKENS_MIN_CHANNELS,
                                    FOLDED_FLOPS_MARGIN, UNFOLDED_MAX_RATIO)


def poly_mean(x: Tensor, wk: Tensor, bk: Tensor, wv: Tensor, bv: Tensor) -> Tensor:
    """m = mean_n (K[n] * V[n]) computed from K and V: (B, C')."""
    k = x @ wk + bk
    v = x @ wv + bv
    return (k * v).mean(dim=1)


def gram_mean(x: Tensor, wk: Tensor, bk: Tensor, wv: Tensor, bv: Tensor,
              channels_first: bool = False) -> Tensor:
    """The same m through the Gram matrix S = X^T X / N and the mean mu: (B, C')."""
    if channels_first:
        gram = x @ x.transpose(1, 2) / x.shape[2]
        mu = x.mean(dim=2)
    else:
        gram = x.transpose(1, 2) @ x / x.shape[1]
        mu = x.mean(dim=1)
    quadratic = (wk * (gram @ wv)).sum(dim=1)
    return quadratic + bk * (mu @ wv) + bv * (mu @ wk) + bk * bv


def naive(x: Tensor, wq: Tensor, bq: Tensor, wk: Tensor, bk: Tensor,
          wv: Tensor, bv: Tensor, wo: Tensor, bo: Tensor) -> Tensor:
    """Paper order: projections, Hadamard product, average pool, broadcast product, output projection."""
    m = poly_mean(x, wk, bk, wv, bv)
    return ((x @ wq + bq) * m.unsqueeze(1)) @ wo + bo


def folded(x: Tensor, wq: Tensor, bq: Tensor, wk: Tensor, bk: Tensor,
           wv: Tensor, bv: Tensor, wo: Tensor, bo: Tensor, channels_first: bool = False) -> Tensor:
    """Exact Gram form: P = X (Wq diag(m) Wo) + ((bq * m) Wo + bo), one C x C GEMM per item.

    S, mu and the C x C algebra run in float32 at least (for fp16 the Gram sum N S overflows from
    N of a few 10^4 at unit scale); the output GEMM runs in X's dtype, as in the ONNX body.
    """
    wide = torch.promote_types(x.dtype, torch.float32)
    x_wide, wq, bq, wk, bk, wv, bv, wo, bo = (t.to(wide) for t in (x, wq, bq, wk, bk, wv, bv, wo, bo))
    m = gram_mean(x_wide, wk, bk, wv, bv, channels_first)
    mixing = ((wq.unsqueeze(0) * m.unsqueeze(1)) @ wo).to(x.dtype)
    shift = ((bq * m) @ wo + bo).to(x.dtype)
    if channels_first:
        return mixing.transpose(1, 2) @ x + shift.unsqueeze(2)
    return x @ mixing + shift.unsqueeze(1)


def prefers_unfolded(channels: int, inner: int) -> bool:
    """True where computing K, V and the low-rank output beats the C x C Gram route."""
    return inner <= UNFOLDED_MAX_RATIO * channels


def folded_costs_more(channels: int, inner: int, positions: int) -> bool:
    """Whether the folded form's flops, 4 N C^2 (Gram matrix and output GEMM) + 4 C^2 C' (m and M, for
    any N), exceed FOLDED_FLOPS_MARGIN times the naive form's 8 N C C' (projections and output)."""
    num, den = FOLDED_FLOPS_MARGIN
    folded = 4 * positions * channels ** 2 + 4 * channels ** 2 * inner
    return den * folded > num * 8 * positions * channels * inner


def prefers_naive(channels: int, inner: int, positions: int | None = None) -> bool:
    """The per-call form choice of eager ``impl="auto"`` and of the CUDA kernels' AUTO path:
    ``prefers_unfolded``, or ``folded_costs_more`` at ``positions`` when given."""
    few_positions = positions is not None and folded_costs_more(channels, inner, positions)
    return prefers_unfolded(channels, inner) or few_positions


def folded_min_positions(channels: int, inner: int) -> int | None:
    """The fewest positions N at which ``folded_costs_more`` is False; None where it holds at every N.

    ``folded_costs_more`` is den C (N + C') > 2 num N C', i.e. N (2 num C' - den C) < den C C'.
    """
    num, den = FOLDED_FLOPS_MARGIN
    slope = 2 * num * inner - den * channels
    if slope <= 0:
        return None
    return -(-den * channels * inner // slope)


def body_prefers_unfolded(layout: str, channels: int, inner: int, positions: int | None = None) -> bool:
    """The form of the exported ONNX function body: ``prefers_unfolded``, token blocks with at least
    BODY_UNFOLDED_TOKENS_MIN_CHANNELS channels, and, decided per call at ``positions`` when given (the
    body reads N from X's shape), ``folded_costs_more``."""
    wide_tokens = layout == LAYOUT_TOKENS and channels >= BODY_UNFOLDED_TOKENS_MIN_CHANNELS
    few_positions = positions is not None and folded_costs_more(channels, inner, positions)
    return prefers_unfolded(channels, inner) or wide_tokens or few_positions


def body_always_unfolded(layout: str, channels: int, inner: int) -> bool:
    """Whether the exported body computes the unfolded form at every N."""
    return body_prefers_unfolded(layout, channels, inner) or folded_min_positions(channels, inner) is None


def body_gram_blocks(channels: int) -> int:
    """In how many channel blocks the exported folded maps body splits X to build X X^T from its upper
    block triangle (1: one full product)."""
    return next((blocks for min_channels, blocks in BODY_GRAM_BLOCKS if channels >= min_channels), 1)
