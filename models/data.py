"""The "marks" task: do two marks at opposite sides of an image have the same shape?

Each image is single-channel noise with one 5x5 mark within ``band`` columns of the left
edge and one within ``band`` columns of the right edge, at random rows and columns. The
label is 1 when both marks have the same shape (probability ``same_probability``).

With the defaults (32x32, band 9) at least 14 columns separate the marks, and the smallest
window holding both is 24 px wide: wider than the 23 px receptive field of the small
ResNet trained on it (see :func:`polynl_models.resnet.marks_small_baseline`). Without a
global block, that network's output is a linear head on averaged local features, none of
which sees both marks whole: roughly a sum of per-mark scores s(a) + s(b), which cannot express "a == b" (it would need 2 s(a) above
and s(a) + s(b) below one threshold for all a != b). A Poly-NL block multiplies local
features by a global average, which contains the cross terms that compare the two marks.
"""

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

SHAPES = {
    "plus": ("..#..", "..#..", "#####", "..#..", "..#.."),
    "cross": ("#...#", ".#.#.", "..#..", ".#.#.", "#...#"),
    "ring": ("#####", "#...#", "#...#", "#...#", "#####"),
    "block": (".....", ".###.", ".###.", ".###.", "....."),
}
"""5x5 mark shapes; the class of a mark is its index in this dict."""

HELD_OUT_SEED = 1
"""Seed of the held-out split; training draws use seeds 1000 + epoch (train.py), never this one."""


@dataclass(frozen=True)
class MarksConfig:
    """Generator parameters (recorded next to the shipped checkpoint)."""

    image_size: int = 32
    band: int = 9
    """Each mark lies entirely within ``band`` columns of its image edge."""
    noise_std: float = 0.2
    min_intensity: float = 0.8
    max_intensity: float = 1.0
    same_probability: float = 0.5

    def as_dict(self) -> dict:
        return {**asdict(self), "shapes": {name: list(rows) for name, rows in SHAPES.items()}}


def shape_masks() -> Tensor:
    """(K, 5, 5) float masks of :data:`SHAPES`."""
    return torch.tensor([[[1.0 if c == "#" else 0.0 for c in row] for row in rows] for rows in SHAPES.values()])


def make_marks_dataset(n: int, seed: int, config: MarksConfig = MarksConfig()) -> tuple[Tensor, Tensor]:
    """``n`` images (n, 1, S, S) float32 and labels (n,) int64, fully determined by ``seed`` and ``config``.

    Uses a private CPU ``torch.Generator``, so the global RNG state is neither used nor changed.
    """
    masks = shape_masks()
    num_shapes, mark_size = masks.shape[0], masks.shape[-1]
    size, band = config.image_size, config.band
    if not mark_size <= band <= size // 2:
        raise ValueError(f"band must be in [{mark_size}, {size // 2}], got {band}")
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, size, size, generator=gen) * config.noise_std
    labels = (torch.rand(n, generator=gen) < config.same_probability).long()
    left_shape = torch.randint(num_shapes, (n,), generator=gen)
    other_shape = (left_shape + torch.randint(1, num_shapes, (n,), generator=gen)) % num_shapes
    right_shape = torch.where(labels.bool(), left_shape, other_shape)
    span = band - mark_size + 1
    rows = torch.randint(size - mark_size + 1, (2, n), generator=gen)
    cols = torch.stack([torch.randint(span, (n,), generator=gen),
                        size - mark_size - torch.randint(span, (n,), generator=gen)])
    intensity = config.min_intensity + torch.rand(2, n, generator=gen) * (config.max_intensity - config.min_intensity)
    offsets = torch.arange(mark_size)
    items = torch.arange(n)[:, None, None]
    for side, shape in enumerate((left_shape, right_shape)):
        r = rows[side][:, None, None] + offsets[None, :, None]
        c = cols[side][:, None, None] + offsets[None, None, :]
        images[items, 0, r, c] += masks[shape] * intensity[side][:, None, None]
    return images, labels


def held_out_split(n: int = 2000, config: MarksConfig = MarksConfig()) -> tuple[Tensor, Tensor]:
    """The held-out split the shipped checkpoint's accuracy is measured on."""
    return make_marks_dataset(n, HELD_OUT_SEED, config)
