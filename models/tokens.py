"""A small token model: patch embedding -> PolyNLTokens blocks with MLPs -> mean pool -> classifier."""

import math

import torch
from torch import Tensor, nn

from polynl_deploy.nn import PolyNLTokens


def sinusoidal_positions(num_tokens: int, dim: int) -> Tensor:
    """(num_tokens, dim) fixed sine/cosine position codes (Vaswani et al.); ``dim`` must be even."""
    if dim % 2:
        raise ValueError(f"sinusoidal positions need an even dim, got {dim}")
    position = torch.arange(num_tokens, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    codes = torch.zeros(num_tokens, dim)
    codes[:, 0::2] = torch.sin(position * frequency)
    codes[:, 1::2] = torch.cos(position * frequency)
    return codes


class PolyNLTokenBlock(nn.Module):
    """Poly-SA-style block: a Poly-NL token mixer, then a channel MLP, each followed by LayerNorm.

    PolyNLTokens carries its own residual (alpha * X + beta * P), so the block is post-norm:
    ``x = norm1(mixer(x))``, ``x = norm2(x + mlp(x))``. The LayerNorms keep the input of the
    next cubic mixer at unit scale.
    """

    def __init__(self, dim: int, mlp_ratio: int = 2, reduction: int = 2) -> None:
        super().__init__()
        self.mixer = PolyNLTokens(dim, reduction=reduction)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(self.mixer(x))
        return self.norm2(x + self.mlp(x))


class PolyNLTokensClassifier(nn.Module):
    """Images (B, C, H, W) -> (B, N, dim) patch tokens + positions -> token blocks -> mean pool -> logits.

    ``positions="learned"`` adds a trained (N, dim) table, ``"sinusoidal"`` a fixed one
    (a buffer) over the row-major patch index. H and W must equal ``image_size``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, patch_size: int = 4,
                 dim: int = 64, depth: int = 4, mlp_ratio: int = 2, reduction: int = 2,
                 positions: str = "learned") -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        num_tokens = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        if positions == "learned":
            self.positions = nn.Parameter(torch.randn(num_tokens, dim) * 0.02)
        elif positions == "sinusoidal":
            self.register_buffer("positions", sinusoidal_positions(num_tokens, dim))
        else:
            raise ValueError(f"positions must be 'learned' or 'sinusoidal', got {positions!r}")
        self.blocks = nn.Sequential(*(PolyNLTokenBlock(dim, mlp_ratio, reduction) for _ in range(depth)))
        self.head = nn.Linear(dim, num_classes)

    def onnx_dynamic_axes(self) -> list[dict[int, str]]:
        """Only the batch: the position table holds one code per patch of an ``image_size`` image."""
        return [{0: "batch"}]

    def forward(self, images: Tensor) -> Tensor:
        tokens = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, dim)
        tokens = self.blocks(tokens + self.positions)
        return self.head(tokens.mean(dim=1))


def polynl_tokens_small(in_channels: int = 3, num_classes: int = 10, image_size: int = 32, patch_size: int = 4,
                        dim: int = 64, depth: int = 4, positions: str = "learned") -> PolyNLTokensClassifier:
    """The zoo's token model: 32x32 images, 4x4 patches (64 tokens), width 64, 4 blocks."""
    return PolyNLTokensClassifier(in_channels, num_classes, image_size, patch_size, dim, depth,
                                  positions=positions)
