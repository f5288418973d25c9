"""The quadratic baseline: non-local blocks (Wang et al., CVPR 2018)."""

from typing import Literal

import torch
from torch import Tensor, nn

Mode = Literal["embedded_gaussian", "dot_product"]


class NonLocal2d(nn.Module):
    """Y = X + norm(W_out(f(theta(X), phi(X)) g(X))) with an N x N pairwise matrix.

    ``embedded_gaussian``: f = softmax(theta^T phi); ``dot_product``: f = theta^T phi / N.
    """

    def __init__(self, channels: int, reduction: int = 2, mode: Mode = "embedded_gaussian",
                 norm: bool = True) -> None:
        super().__init__()
        if mode not in ("embedded_gaussian", "dot_product"):
            raise ValueError(f"mode must be 'embedded_gaussian' or 'dot_product', got {mode!r}")
        inner = max(channels // reduction, 1)
        self.channels, self.inner_channels, self.mode = channels, inner, mode
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.out = nn.Conv2d(inner, channels, 1)
        self.norm = nn.BatchNorm2d(channels) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"NonLocal2d expects (B, {self.channels}, H, W), got {tuple(x.shape)}")
        b, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, C')
        phi = self.phi(x).flatten(2)                      # (B, C', N)
        g = self.g(x).flatten(2).transpose(1, 2)          # (B, N, C')
        pairwise = theta @ phi                            # (B, N, N)
        if self.mode == "embedded_gaussian":
            pairwise = torch.softmax(pairwise, dim=-1)
        else:
            pairwise = pairwise / pairwise.shape[-1]
        z = (pairwise @ g).transpose(1, 2).reshape(b, self.inner_channels, h, w)
        projected = self.out(z)
        if self.norm is not None:
            projected = self.norm(projected)
        return x + projected

    def extra_repr(self) -> str:
        return f"channels={self.channels}, inner_channels={self.inner_channels}, mode={self.mode}"
