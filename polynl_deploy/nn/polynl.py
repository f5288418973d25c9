"""Poly-NL blocks (Babiloni et al., ICCV 2021) for feature maps and token sequences."""

from typing import Literal

import torch
from torch import Tensor, nn

from polynl_deploy import contract
from polynl_deploy.nn import functional as F

Impl = Literal["naive", "folded", "auto"]


class _PolyNLBase(nn.Module):
    """Shared parameters and algebra; subclasses fix the layout and the projection modules."""

    layout: str

    def __init__(self, channels: int, reduction: int, impl: Impl) -> None:
        super().__init__()
        if channels < 1 or reduction < 1 or channels // reduction < 1:
            raise ValueError(f"need channels >= reduction >= 1, got channels={channels}, reduction={reduction}")
        if impl not in ("naive", "folded", "auto"):
            raise ValueError(f"impl must be 'naive', 'folded' or 'auto', got {impl!r}")
        self.channels = channels
        self.inner_channels = channels // reduction
        self.impl = impl
        self.alpha = nn.Parameter(torch.ones(()))
        self.beta = nn.Parameter(torch.ones(()))

    # --- weights as matrices (C, C') / (C', C) -------------------------------------------
    def _matrix(self, proj: nn.Module) -> Tensor:
        return proj.weight.reshape(proj.weight.shape[0], -1).t()

    def _bias(self, proj: nn.Module) -> Tensor:
        if proj.bias is None:
            return proj.weight.new_zeros(proj.weight.shape[0])
        return proj.bias

    def projection_weights(self) -> dict[str, Tensor]:
        """Wq, bq, Wk, bk, Wv, bv, Wo, bo of the block as trained (norm and beta not folded)."""
        return {
            "Wq": self._matrix(self.query), "bq": self._bias(self.query),
            "Wk": self._matrix(self.key), "bk": self._bias(self.key),
            "Wv": self._matrix(self.value), "bv": self._bias(self.value),
            "Wo": self._matrix(self.out), "bo": self._bias(self.out),
        }

    @torch.no_grad()
    def folded_weights(self) -> dict[str, Tensor]:
        """Contract inputs for inference: beta and an eval-mode norm folded into Wo, bo."""
        w = {k: v.detach().clone() for k, v in self.projection_weights().items()}
        scale, shift = self._norm_affine()
        w["Wo"] = w["Wo"] * (self.beta * scale)
        w["bo"] = (w["bo"] * scale + shift) * self.beta
        return w

    def _norm_affine(self) -> tuple[Tensor, Tensor]:
        ones = self.alpha.new_ones(self.channels)
        norm = self.norm
        if norm is None:
            return ones, torch.zeros_like(ones)
        inv = torch.rsqrt(norm.running_var + norm.eps)
        scale = inv * norm.weight if norm.affine else inv
        shift = -norm.running_mean * scale + (norm.bias if norm.affine else 0.0)
        return scale, shift

    def resolved_impl(self, positions: int | None = None) -> str:
        """The form a call computes. ``auto``: naive where C' <= C/4 and, given the call's N, where the
        folded form's C x C algebra makes it cost more (``functional.folded_costs_more``)."""
        if self.impl != "auto":
            return self.impl
        return "naive" if F.prefers_naive(self.channels, self.inner_channels, positions) else "folded"

    def _residual(self, x: Tensor, projected: Tensor) -> Tensor:
        """Y = alpha * X + beta * norm(P), P in the layout of X."""
        if self.norm is not None:
            projected = self._apply_norm(projected)
        return self.alpha * x + self.beta * projected

    def _folded_projection(self, x: Tensor, channels_first: bool) -> Tensor:
        return F.folded(x, *self.projection_weights().values(), channels_first=channels_first)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, inner_channels={self.inner_channels}, "
                f"layout={self.layout}, impl={self.impl}")


class PolyNL2d(_PolyNLBase):
    """Poly-NL block for (B, C, H, W) feature maps; 1x1 convolutions, optional BatchNorm2d after ``out``."""

    layout = contract.LAYOUT_MAPS

    def __init__(self, channels: int, reduction: int = 2, bias: bool = True, norm: bool = True,
                 impl: Impl = "auto") -> None:
        super().__init__(channels, reduction, impl)
        inner = self.inner_channels
        self.query = nn.Conv2d(channels, inner, 1, bias=bias)
        self.key = nn.Conv2d(channels, inner, 1, bias=bias)
        self.value = nn.Conv2d(channels, inner, 1, bias=bias)
        self.out = nn.Conv2d(inner, channels, 1, bias=bias)
        self.norm = nn.BatchNorm2d(channels) if norm else None

    def _apply_norm(self, projected: Tensor) -> Tensor:
        return self.norm(projected)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"PolyNL2d expects (B, {self.channels}, H, W), got {tuple(x.shape)}")
        if self.resolved_impl(x.shape[2] * x.shape[3]) == "naive":
            k, v = self.key(x), self.value(x)
            m = (k * v).mean(dim=(2, 3), keepdim=True)
            projected = self.out(self.query(x) * m)
        else:
            projected = self._folded_projection(x.flatten(2), channels_first=True).reshape(x.shape)
        return self._residual(x, projected)


class PolyNLTokens(_PolyNLBase):
    """Poly-NL block for (B, N, C) token sequences; linear projections, optional BatchNorm1d over channels.

    A LayerNorm would not fold into the output projection, so the only norm offered is
    BatchNorm over channels (``norm=True``), which folds at inference like the 2d block's.
    """

    layout = contract.LAYOUT_TOKENS

    def __init__(self, channels: int, reduction: int = 2, bias: bool = True, norm: bool = False,
                 impl: Impl = "auto") -> None:
        super().__init__(channels, reduction, impl)
        inner = self.inner_channels
        self.query = nn.Linear(channels, inner, bias=bias)
        self.key = nn.Linear(channels, inner, bias=bias)
        self.value = nn.Linear(channels, inner, bias=bias)
        self.out = nn.Linear(inner, channels, bias=bias)
        self.norm = nn.BatchNorm1d(channels) if norm else None

    def _apply_norm(self, projected: Tensor) -> Tensor:
        return self.norm(projected.transpose(1, 2)).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[2] != self.channels:
            raise ValueError(f"PolyNLTokens expects (B, N, {self.channels}), got {tuple(x.shape)}")
        if self.resolved_impl(x.shape[1]) == "naive":
            k, v = self.key(x), self.value(x)
            m = (k * v).mean(dim=1, keepdim=True)
            projected = self.out(self.query(x) * m)
        else:
            projected = self._folded_projection(x, channels_first=False)
        return self._residual(x, projected)
