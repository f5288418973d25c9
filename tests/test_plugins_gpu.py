"""libpolynl_kernels on a CUDA GPU (ctypes, torch CUDA tensors) against eager torch
(polynl_deploy.nn.functional) for every path, dtype and layout."""

import ctypes
import shutil

import pytest
import torch

from kernel_abi import AUTO, FOLDED, LAYOUT_NAMES, MAPS, PATH_NAMES, TOKENS, UNFOLDED, Desc
from kernel_cases import CASES, assert_close, case_id, make_inputs
from polynl_deploy import contract
from polynl_deploy.kernels import KernelLibrary, build_kernel_library
from polynl_deploy.nn import functional as F

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (torch.cuda.is_available() is False)"),
]


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found")
    major, minor = torch.cuda.get_device_capability()
    return KernelLibrary(build_kernel_library(tmp_path_factory.mktemp("kernels"), f"{major}{minor}"))


def run_kernels(lib, x, weights, layout, path, alpha):
    """Y from libpolynl_kernels through polynl_deploy.kernels; x and weights are CUDA tensors."""
    return lib.forward(x, dict(zip(contract.INPUT_NAMES[1:], weights)), LAYOUT_NAMES[layout], alpha, PATH_NAMES[path])


def expected_output(x, weights, layout, alpha):
    """alpha X + naive(X) in float64 eager torch, in the layout of x."""
    x64 = x.double()
    tokens = x64.flatten(2).transpose(1, 2) if layout == MAPS else x64
    projected = F.naive(tokens, *[w.double() for w in weights])
    if layout == MAPS:
        projected = projected.transpose(1, 2).reshape(x.shape)
    return alpha * x64 + projected


def make_cuda_inputs(case, layout, dtype, weight_dtype):
    x, weights = make_inputs(case, layout, dtype, weight_dtype)
    return x.cuda(), [w.cuda() for w in weights]


@pytest.mark.parametrize("layout", [MAPS, TOKENS])
@pytest.mark.parametrize("path", [FOLDED, UNFOLDED, AUTO])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_matches_torch(kernels, layout, path, dtype, case):
    x, weights = make_cuda_inputs(case, layout, dtype, dtype)
    y = run_kernels(kernels, x, weights, layout, path, 0.75)
    assert_close(y.double(), expected_output(x, weights, layout, 0.75), dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_float32_weights_with_reduced_precision_x(kernels, dtype):
    x, weights = make_cuda_inputs((2, 24, 12, (6, 5)), MAPS, dtype, torch.float32)
    y = run_kernels(kernels, x, weights, MAPS, AUTO, 1.0)
    assert_close(y.double(), expected_output(x, weights, MAPS, 1.0), dtype)


def test_auto_path_follows_threshold(kernels):
    for channels, inner, positions, expected in ((64, 16, 4096, UNFOLDED), (64, 32, 127, UNFOLDED),
                                                 (64, 32, 128, FOLDED), (64, 17, 4096, UNFOLDED)):
        assert F.prefers_naive(channels, inner, positions) == (expected == UNFOLDED)
        desc = Desc(1, channels, inner, positions, MAPS, 0, 0, AUTO, 1.0)
        path = ctypes.c_int32()
        assert kernels.abi.polynl_resolve_path(ctypes.byref(desc), ctypes.byref(path)) == 0
        assert path.value == expected


def test_errors_are_reported(kernels):
    x, weights = make_cuda_inputs((1, 8, 4, (3, 3)), MAPS, torch.float16, torch.float16)
    desc = Desc(1, 8, 4, 9, MAPS, 1, 2, AUTO, 1.0)  # fp16 X with bf16 weights
    size = ctypes.c_size_t()
    assert kernels.abi.polynl_workspace_size(ctypes.byref(desc), ctypes.byref(size)) == 2
    assert b"weights" in kernels.abi.polynl_last_error()
    desc = Desc(1, 8, 4, 9, MAPS, 1, 1, AUTO, 1.0)
    pointers = (ctypes.c_void_p * 8)(*[w.data_ptr() for w in weights])
    y = torch.empty_like(x)
    workspace = torch.empty(16, dtype=torch.uint8, device="cuda")
    status = kernels.abi.polynl_forward(ctypes.byref(desc), x.data_ptr(), pointers, y.data_ptr(),
                                        workspace.data_ptr(), 16, torch.cuda.current_stream().cuda_stream)
    assert status == 3 and b"workspace" in kernels.abi.polynl_last_error()


def test_prepared_call_reuses_its_buffers_on_the_current_stream(kernels):
    """The benchmark's path: one prepared call, repeated, on a side stream."""
    x, weights = make_cuda_inputs(CASES[1], TOKENS, torch.float16, torch.float16)
    named = dict(zip(contract.INPUT_NAMES[1:], weights))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        call = kernels.prepare(x, named, "tokens", 0.75)
        first = call().clone()
        second = call()
    stream.synchronize()
    expected = expected_output(x, weights, TOKENS, 0.75)
    for y in (first, second):  # atomics may order the float32 sums differently from call to call
        assert_close(y.double(), expected, torch.float16)
