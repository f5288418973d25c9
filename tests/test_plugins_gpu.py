"""libpolynl_kernels on a CUDA GPU (ctypes, torch CUDA tensors) against eager torch
(polynl_deploy.nn.functional) for every path, dtype and layout."""

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from polynl_deploy.defaults import TOLERANCES
from polynl_deploy.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (torch.cuda.is_available() is False)"),
]

AUTO, FOLDED, UNFOLDED = 0, 1, 2
MAPS, TOKENS = 0, 1
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


class Desc(ctypes.Structure):
    _fields_ = [("batch", ctypes.c_int64), ("channels", ctypes.c_int64), ("inner", ctypes.c_int64),
                ("positions", ctypes.c_int64), ("layout", ctypes.c_int32), ("x_dtype", ctypes.c_int32),
                ("weight_dtype", ctypes.c_int32), ("path", ctypes.c_int32), ("alpha", ctypes.c_float)]


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found")
    build = tmp_path_factory.mktemp("kernels")
    major, minor = torch.cuda.get_device_capability()
    subprocess.run(["cmake", "-S", str(PLUGINS), "-B", str(build), f"-DCMAKE_CUDA_ARCHITECTURES={major}{minor}",
                    "-DPOLYNL_BUILD_TESTS=OFF", "-DCMAKE_BUILD_TYPE=Release"], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "--target", "polynl_kernels", "-j", str(os.cpu_count() or 2)],
                   check=True, capture_output=True)
    lib = ctypes.CDLL(str(build / "libpolynl_kernels.so"))
    desc_p = ctypes.POINTER(Desc)
    lib.polynl_workspace_size.argtypes = [desc_p, ctypes.POINTER(ctypes.c_size_t)]
    lib.polynl_resolve_path.argtypes = [desc_p, ctypes.POINTER(ctypes.c_int32)]
    lib.polynl_forward.argtypes = [desc_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p,
                                   ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    lib.polynl_last_error.restype = ctypes.c_char_p
    return lib


def run_kernels(lib, x, weights, layout, path, alpha, inner):
    """Y from libpolynl_kernels; x and weights are contiguous CUDA tensors."""
    if layout == MAPS:
        batch, channels, positions = x.shape[0], x.shape[1], x[0, 0].numel()
    else:
        batch, positions, channels = x.shape
    desc = Desc(batch, channels, inner, positions, layout, DTYPES[x.dtype], DTYPES[weights[0].dtype], path, alpha)
    size = ctypes.c_size_t()
    assert lib.polynl_workspace_size(ctypes.byref(desc), ctypes.byref(size)) == 0, lib.polynl_last_error()
    workspace = torch.empty(max(size.value, 1), dtype=torch.uint8, device=x.device)
    y = torch.empty_like(x)
    pointers = (ctypes.c_void_p * 8)(*[w.data_ptr() for w in weights])
    stream = torch.cuda.current_stream().cuda_stream
    status = lib.polynl_forward(ctypes.byref(desc), x.data_ptr(), pointers, y.data_ptr(), workspace.data_ptr(),
                                size.value, stream)
    assert status == 0, lib.polynl_last_error().decode()
    torch.cuda.synchronize()
    return y


def expected_output(x, weights, layout, alpha):
    """alpha X + naive(X) in float64 eager torch, in the layout of x."""
    x64 = x.double()
    tokens = x64.flatten(2).transpose(1, 2) if layout == MAPS else x64
    projected = F.naive(tokens, *[w.double() for w in weights])
    if layout == MAPS:
        projected = projected.transpose(1, 2).reshape(x.shape)
    return alpha * x64 + projected


def make_inputs(batch, channels, inner, spatial, layout, dtype, weight_dtype, seed=0):
    generator = torch.Generator(device="cpu").manual_seed(seed)
    shape = (batch, channels, *spatial) if layout == MAPS else (batch, spatial[0], channels)
    x = torch.randn(shape, generator=generator)
    shapes = [(channels, inner), (inner,)] * 3 + [(inner, channels), (channels,)]
    weights = [torch.randn(s, generator=generator) * (channels ** -0.5 if len(s) == 2 else 0.5) for s in shapes]
    return x.to("cuda", dtype), [w.to("cuda", weight_dtype) for w in weights]


def check_close(y, expected, dtype, magnitude):
    tol = TOLERANCES[str(dtype).removeprefix("torch.")]
    # Reduced-precision storage of X and Y bounds the error relative to the output magnitude.
    atol = tol["atol"] * max(1.0, magnitude)
    torch.testing.assert_close(y.double(), expected, atol=atol, rtol=tol["rtol"])


CASES = [
    # batch, channels, inner, spatial (maps: (H, W); tokens: (N,))
    (1, 32, 16, (8, 8)),
    (3, 13, 6, (5, 7)),     # C not a multiple of 8, N not a multiple of any tile
    (2, 70, 9, (9, 11)),    # C' <= C/4: AUTO takes the unfolded path
    (2, 40, 20, (33, 65)),  # N > 2048: position slices in the reductions
]


@pytest.mark.parametrize("layout", [MAPS, TOKENS])
@pytest.mark.parametrize("path", [FOLDED, UNFOLDED, AUTO])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_torch(kernels, layout, path, dtype, case):
    batch, channels, inner, spatial = case
    if layout == TOKENS:
        spatial = (spatial[0] * spatial[-1],)
    x, weights = make_inputs(batch, channels, inner, spatial, layout, dtype, dtype)
    y = run_kernels(kernels, x, weights, layout, path, 0.75, inner)
    expected = expected_output(x, weights, layout, 0.75)
    check_close(y, expected, dtype, expected.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_float32_weights_with_reduced_precision_x(kernels, dtype):
    x, weights = make_inputs(2, 24, 12, (6, 5), MAPS, dtype, torch.float32)
    y = run_kernels(kernels, x, weights, MAPS, AUTO, 1.0, 12)
    expected = expected_output(x, weights, MAPS, 1.0)
    check_close(y, expected, dtype, expected.abs().max().item())


def test_auto_path_follows_threshold(kernels):
    for channels, inner, expected in ((64, 16, UNFOLDED), (64, 17, FOLDED), (64, 32, FOLDED)):
        assert F.prefers_unfolded(channels, inner) == (expected == UNFOLDED)
        desc = Desc(1, channels, inner, 10, MAPS, 0, 0, AUTO, 1.0)
        path = ctypes.c_int32()
        assert kernels.polynl_resolve_path(ctypes.byref(desc), ctypes.byref(path)) == 0
        assert path.value == expected


def test_errors_are_reported(kernels):
    x, weights = make_inputs(1, 8, 4, (3, 3), MAPS, torch.float16, torch.float16)
    desc = Desc(1, 8, 4, 9, MAPS, 1, 2, AUTO, 1.0)  # fp16 X with bf16 weights
    size = ctypes.c_size_t()
    assert kernels.polynl_workspace_size(ctypes.byref(desc), ctypes.byref(size)) == 2
    assert b"weights" in kernels.polynl_last_error()
    desc = Desc(1, 8, 4, 9, MAPS, 1, 1, AUTO, 1.0)
    pointers = (ctypes.c_void_p * 8)(*[w.data_ptr() for w in weights])
    y = torch.empty_like(x)
    workspace = torch.empty(16, dtype=torch.uint8, device="cuda")
    status = kernels.polynl_forward(ctypes.byref(desc), x.data_ptr(), pointers, y.data_ptr(), workspace.data_ptr(),
                                    16, torch.cuda.current_stream().cuda_stream)
    assert status == 3 and b"workspace" in kernels.polynl_last_error()
