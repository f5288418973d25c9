"""Small models for the tests, importable as ``fixture_models:<factory>`` SOURCEs."""

import torch
from torch import nn

from polynl_deploy.nn import PolyNL2d, PolyNLTokens


class TwoBlockNet(nn.Module):
    """Conv stem, two Poly-NL blocks of different widths (folded and unfolded bodies), a conv head."""

    default_input_shape = (2, 3, 10, 14)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.block1 = PolyNL2d(12)
        self.widen = nn.Conv2d(12, 20, 1)
        self.block2 = PolyNL2d(20, reduction=5, norm=False)
        self.head = nn.Conv2d(20, 4, 1)

    def forward(self, x):
        return self.head(self.block2(torch.relu(self.widen(self.block1(self.stem(x))))))


class TokenNet(nn.Module):
    default_input_shape = (2, 9, 10)

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(PolyNLTokens(10), nn.GELU(), PolyNLTokens(10, reduction=4, norm=True))
        self.head = nn.Linear(10, 3)

    def forward(self, x):
        return self.head(self.blocks(x))


class PlainNet(nn.Module):
    """No Poly-NL block at all."""

    default_input_shape = (1, 3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


def two_block_net() -> nn.Module:
    from conftest import randomize
    return randomize(TwoBlockNet(), seed=1)


def token_net() -> nn.Module:
    from conftest import randomize
    return randomize(TokenNet(), seed=2)


def plain_net() -> nn.Module:
    return PlainNet().eval()


def not_a_module():
    return 42
