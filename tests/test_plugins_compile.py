"""The CUDA kernel library compiles with nvcc for every supported architecture (compile only, no GPU),
and the CMake project configures and builds its CPU parts and kernels."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
ARCHITECTURES = (75, 80, 90, 100, 120)


def find_nvcc():
    candidates = [shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


NVCC = find_nvcc()


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (PATH or $CUDA_HOME/bin)")
def test_kernels_compile_for_all_architectures(tmp_path):
    gencodes = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHITECTURES]
    command = [NVCC, "-std=c++17", "-O3", "-Xcompiler=-fPIC,-Wall,-Wextra", f"-I{PLUGINS / 'include'}",
               f"-I{PLUGINS / 'core'}", *gencodes, "-c", str(PLUGINS / "kernels" / "polynl_kernels.cu"),
               "-o", str(tmp_path / "polynl_kernels.o")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not found")
def test_cmake_builds_core_and_runs_ctest(tmp_path):
    build = tmp_path / "build"
    configure = ["cmake", "-S", str(PLUGINS), "-B", str(build), "-DCMAKE_CUDA_ARCHITECTURES=80"]
    if NVCC:
        configure.append(f"-DCMAKE_CUDA_COMPILER={NVCC}")
    else:
        configure.append("-DPOLYNL_BUILD_KERNELS=OFF")
    result = subprocess.run(configure, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    if "TensorRT headers" in result.stdout:
        print("cmake:", next(line for line in result.stdout.splitlines() if "polynl_trt_plugin" in line))
    subprocess.run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)], check=True, capture_output=True)
    result = subprocess.run(["ctest", "--test-dir", str(build), "--output-on-failure"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    if NVCC:
        assert (build / "libpolynl_kernels.so").exists()
