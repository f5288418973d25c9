"""Poly-NL layers and the non-local baseline."""

from polynl_deploy.nn.nonlocal_block import NonLocal2d
from polynl_deploy.nn.polynl import PolyNL2d, PolyNLTokens

POLYNL_BLOCKS = (PolyNL2d, PolyNLTokens)

__all__ = ["NonLocal2d", "PolyNL2d", "PolyNLTokens", "POLYNL_BLOCKS"]
