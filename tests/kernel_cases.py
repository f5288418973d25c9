"""Problem cases, inputs and tolerances shared by the kernel tests: test_plugins_gpu.py (CUDA) and
test_plugins_emulated.py (the same kernel source run by the CPU emulation)."""

import torch

from kernel_abi import MAPS

# batch, channels C, inner C', spatial (H, W); tokens use N = H * W positions. The kernels tile channels
# by 32 (Gram) and 64 (GEMMs), C' by 32 (means) and 64, positions by 32 (Gram) and 64, and split 512 or
# more positions into slices of at least 256 that meet in atomics.
CASES = [
    (1, 32, 16, (8, 8)),    # whole Gram tiles
    (3, 13, 6, (5, 7)),     # C and N below one tile, odd
    (2, 70, 9, (9, 11)),    # C across the 64-wide GEMM tile; C' <= C/4: AUTO takes the unfolded path
    (1, 80, 66, (5, 6)),    # C' > 64: two GEMM column tiles, three column blocks of the means
    (2, 5, 1, (1, 700)),    # C' = 1, H = 1; 700 positions: two slices of 350
    (2, 40, 20, (33, 65)),  # N = 2145: eight slices of 269 positions
]

# Accumulation is float32 everywhere. Over a few thousand terms its rounding errors grow like the square
# root of their number and stay well inside 64 float32 ulps of the output magnitude (at most 4 measured
# on the CPU emulation), while one missing or doubled position in the largest case moves outputs by
# thousands of ulps.
FLOAT32_ACCUMULATION_ULPS = 64


def case_id(case):
    batch, channels, inner, spatial = case
    return f"B{batch}-C{channels}-R{inner}-{spatial[0]}x{spatial[1]}"


def make_inputs(case, layout, dtype, weight_dtype, seed=0):
    """X (in `layout`) and the eight weights in contract order as CPU tensors; all biases non-zero."""
    batch, channels, inner, (height, width) = case
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, channels, height, width) if layout == MAPS else (batch, height * width, channels)
    x = torch.randn(shape, generator=generator)
    shapes = [(channels, inner), (inner,)] * 3 + [(inner, channels), (channels,)]
    weights = [torch.randn(s, generator=generator) * (channels ** -0.5 if len(s) == 2 else 0.5) for s in shapes]
    return x.to(dtype), [w.to(weight_dtype) for w in weights]


def assert_close(y, expected, dtype):
    """Y (float64 tensor) against the float64 reference computed from the same (rounded) inputs.

    Intermediates are float32 and Y is rounded once to its dtype, so each element may differ by half an ulp
    of its own value in that dtype (rtol) plus the float32 accumulation error, a few dozen float32 ulps of
    the output magnitude (atol)."""
    magnitude = expected.abs().max().item()
    atol = FLOAT32_ACCUMULATION_ULPS * torch.finfo(torch.float32).eps * magnitude
    rtol = torch.finfo(dtype).eps / 2
    torch.testing.assert_close(y, expected, atol=atol, rtol=rtol)
