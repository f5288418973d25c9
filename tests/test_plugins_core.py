"""Functional core of the plugin (plugins/core), built with g++ on the CPU: C++ unit tests, and the
float64 CPU reference (through its C ABI, ctypes) against NumPy and polynl_deploy.nn.functional."""

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from polynl_deploy.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "plugins" / "core"
INCLUDE = ROOT / "plugins" / "include"
CXX = shutil.which("g++") or shutil.which("c++")
CXXFLAGS = ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{CORE}", f"-I{INCLUDE}",
            f"-I{CORE.parent / 'testing'}"]

pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++/c++) on PATH")

MAPS, TOKENS = 0, 1
FOLDED, UNFOLDED = 0, 1


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    library = tmp_path_factory.mktemp("core") / "libpolynl_reference.so"
    subprocess.run([CXX, *CXXFLAGS, "-shared", "-fPIC", str(CORE / "polynl_core.cpp"),
                    str(CORE / "polynl_reference_c.cpp"), "-o", str(library)], check=True)
    lib = ctypes.CDLL(str(library))
    i64, i32 = ctypes.c_int64, ctypes.c_int32
    double_p = ctypes.POINTER(ctypes.c_double)
    lib.polynl_reference_forward.argtypes = [i64, i64, i64, i64, i32, i32, ctypes.c_float,
                                             double_p, ctypes.POINTER(double_p), double_p]
    lib.polynl_reference_forward.restype = i32
    lib.polynl_reference_choose_path.argtypes = [i64, i64, i64]
    lib.polynl_reference_choose_path.restype = i32
    lib.polynl_reference_validate_shapes.argtypes = [ctypes.POINTER(i32), ctypes.POINTER(i64), i32]
    lib.polynl_reference_validate_shapes.restype = i32
    lib.polynl_reference_last_error.restype = ctypes.c_char_p
    return lib


def test_core_unit_tests(tmp_path):
    executable = tmp_path / "test_polynl_core"
    subprocess.run([CXX, *CXXFLAGS, str(CORE / "polynl_core.cpp"), str(CORE / "tests" / "test_core.cpp"),
                    "-o", str(executable)], check=True)
    result = subprocess.run([str(executable)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "all checks passed" in result.stdout


def numpy_block(x_tokens, weights, alpha):
    """Independent float64 reference on (B, N, C): alpha X + ((X Wq + bq) * m) Wo + bo."""
    wq, bq, wk, bk, wv, bv, wo, bo = weights
    m = ((x_tokens @ wk + bk) * (x_tokens @ wv + bv)).mean(axis=1, keepdims=True)
    return alpha * x_tokens + ((x_tokens @ wq + bq) * m) @ wo + bo


def random_weights(rng, channels, inner):
    shapes = [(channels, inner), (inner,)] * 3 + [(inner, channels), (channels,)]
    return [rng.standard_normal(s) * (0.5 if len(s) == 2 else 1.0) for s in shapes]


def run_reference(lib, x, weights, layout, path, alpha, inner):
    x = np.ascontiguousarray(x, np.float64)
    weights = [np.ascontiguousarray(w, np.float64) for w in weights]
    if layout == MAPS:
        batch, channels = x.shape[:2]
        positions = int(np.prod(x.shape[2:]))
    else:
        batch, positions, channels = x.shape
    double_p = ctypes.POINTER(ctypes.c_double)
    pointers = (double_p * 8)(*[w.ctypes.data_as(double_p) for w in weights])
    y = np.empty_like(x)
    status = lib.polynl_reference_forward(batch, channels, inner, positions, layout, path, alpha,
                                          x.ctypes.data_as(double_p), pointers, y.ctypes.data_as(double_p))
    assert status == 0, lib.polynl_reference_last_error().decode()
    return y


@pytest.mark.parametrize("layout", [MAPS, TOKENS])
@pytest.mark.parametrize("path", [FOLDED, UNFOLDED])
@pytest.mark.parametrize("batch,channels,inner,spatial", [(1, 8, 4, (4, 4)), (3, 13, 3, (5, 7)), (2, 6, 6, (1, 9))])
def test_reference_matches_numpy(reference, layout, path, batch, channels, inner, spatial):
    rng = np.random.default_rng(batch * 100 + channels)
    weights = random_weights(rng, channels, inner)
    positions = int(np.prod(spatial))
    alpha = 0.625
    if layout == MAPS:
        x = rng.standard_normal((batch, channels, *spatial))
        tokens = x.reshape(batch, channels, positions).transpose(0, 2, 1)
    else:
        x = rng.standard_normal((batch, positions, channels))
        tokens = x
    expected = numpy_block(tokens, weights, alpha)
    if layout == MAPS:
        expected = expected.transpose(0, 2, 1).reshape(x.shape)
    y = run_reference(reference, x, weights, layout, path, alpha, inner)
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10)


def test_reference_matches_torch_functional(reference):
    rng = np.random.default_rng(3)
    batch, positions, channels, inner = 2, 11, 10, 5
    weights = random_weights(rng, channels, inner)
    x = rng.standard_normal((batch, positions, channels))
    as_torch = [torch.from_numpy(w) for w in weights]
    for path, form in ((FOLDED, F.folded), (UNFOLDED, F.naive)):
        expected = 1.5 * x + form(torch.from_numpy(x), *as_torch).numpy()
        y = run_reference(reference, x, weights, TOKENS, path, 1.5, inner)
        np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10)


def test_path_choice_matches_python(reference):
    """The kernels' AUTO rule (core::choosePath) is eager impl="auto"'s (F.prefers_naive), N unknown or given."""
    unknown = -1
    for channels in range(1, 70):
        for inner in range(1, channels + 1):
            assert reference.polynl_reference_choose_path(channels, inner, unknown) == \
                F.prefers_unfolded(channels, inner), (channels, inner)
            for positions in (0, 1, channels, 2 * channels - 1, 2 * channels, 3 * channels, 10 ** 6):
                assert reference.polynl_reference_choose_path(channels, inner, positions) == \
                    F.prefers_naive(channels, inner, positions), (channels, inner, positions)
    for channels, inner in ((768, 384), (1024, 512), (4096, 2048)):
        for positions in range(2 * channels - 3, 2 * channels + 3):
            assert reference.polynl_reference_choose_path(channels, inner, positions) == \
                F.prefers_naive(channels, inner, positions) == (positions < 2 * channels)


def validate(lib, shapes, layout):
    ranks = (ctypes.c_int32 * len(shapes))(*[len(s) for s in shapes])
    flat = [d for s in shapes for d in s]
    dims = (ctypes.c_int64 * max(1, len(flat)))(*flat)
    status = lib.polynl_reference_validate_shapes(ranks, dims, layout)
    return "" if status == 0 else lib.polynl_reference_last_error().decode()


def contract_shapes(x, channels, inner):
    return [x, (channels, inner), (inner,), (channels, inner), (inner,), (channels, inner), (inner,),
            (inner, channels), (channels,)]


def test_shape_validation_messages(reference):
    assert validate(reference, contract_shapes((2, 16, 3, 5), 16, 8), MAPS) == ""
    assert validate(reference, contract_shapes((2, 15, 16), 16, 8), TOKENS) == ""
    assert validate(reference, contract_shapes((-1, 16, -1, -1), 16, 8), MAPS) == ""
    assert "(B, N, C)" in validate(reference, contract_shapes((2, 16, 3, 5), 16, 8), TOKENS)
    shapes = contract_shapes((2, 15, 16), 16, 8)
    shapes[5] = (16, 7)
    message = validate(reference, shapes, TOKENS)
    assert "Wv" in message and "(16, 7)" in message and "(16, 8)" in message
    shapes = contract_shapes((2, 15, 16), 16, 8)
    shapes[7] = (16, 8)
    assert "Wo" in validate(reference, shapes, TOKENS)
