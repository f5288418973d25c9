"""The CUDA kernel library compiles with nvcc for every supported architecture (compile only, no GPU),
and the CMake project configures and builds its CPU parts and kernels."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import emulated_kernels

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
ARCHITECTURES = (75, 80, 90, 100, 120)


def find_nvcc():
    candidates = [shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


NVCC = find_nvcc()


def tensorrt_include_dir() -> Path | None:
    """Where plugins/CMakeLists.txt finds NvInferRuntime.h: $TensorRT_ROOT, then the standard locations
    (the TensorRT containers' /usr/include/<arch>-linux-gnu included). Headers suffice; no library needed."""
    root = os.environ.get("TensorRT_ROOT", "")
    candidates = [Path(root) / "include", Path(root)] if root else []
    candidates += [Path(p) for p in ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu",
                                     "/usr/local/tensorrt/include", "/usr/local/TensorRT/include", "/usr/include")]
    return next((c for c in candidates if (c / "NvInferRuntime.h").is_file()), None)


TENSORRT_INCLUDE = tensorrt_include_dir()


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (PATH or $CUDA_HOME/bin)")
def test_kernels_compile_for_all_architectures(tmp_path):
    gencodes = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHITECTURES]
    command = [NVCC, "-std=c++17", "-O3", "-Xcompiler=-fPIC,-Wall,-Wextra", f"-I{PLUGINS / 'include'}",
               f"-I{PLUGINS / 'core'}", *gencodes, "-c", str(PLUGINS / "kernels" / "polynl_kernels.cu"),
               "-o", str(tmp_path / "polynl_kernels.o")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr


@pytest.fixture(scope="module")
def cmake_build(tmp_path_factory):
    """Configures and builds plugins/ once (kernels for sm_80 only, to keep the test fast)."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found")
    build = tmp_path_factory.mktemp("plugins_build")
    configure = ["cmake", "-S", str(PLUGINS), "-B", str(build), "-DCMAKE_CUDA_ARCHITECTURES=80"]
    configure.append(f"-DCMAKE_CUDA_COMPILER={NVCC}" if NVCC else "-DPOLYNL_BUILD_KERNELS=OFF")
    if TENSORRT_INCLUDE is not None:
        configure.append(f"-DTensorRT_INCLUDE_DIR={TENSORRT_INCLUDE}")
    result = subprocess.run(configure, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for line in result.stdout.splitlines():
        if "polynl_trt_plugin" in line:
            print("cmake:", line)
    subprocess.run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)], check=True, capture_output=True)
    return build


def test_cmake_builds_core_and_runs_ctest(cmake_build):
    result = subprocess.run(["ctest", "--test-dir", str(cmake_build), "--output-on-failure"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    if NVCC:
        assert (cmake_build / "libpolynl_kernels.so").exists()


def test_plugin_against_compile_check_shim(tmp_path):
    """Compiles the TensorRT plugin against the compile-check shim (not TensorRT) with the CPU-emulated
    kernels and runs it on the CPU: creator fields, serialization round trip, formats, shapes,
    workspace, and enqueue on host buffers against the float64 reference."""
    headers = emulated_kernels.toolkit_include_dir() or emulated_kernels.NO_TOOLKIT
    emulated_kernels.build(tmp_path, {"kernels": headers}, sanitize=False)
    shim = PLUGINS / "tensorrt" / "compile_check_shim"
    executable = tmp_path / "plugin_smoke_test"
    subprocess.run([emulated_kernels.CXX, "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{shim}",
                    f"-I{PLUGINS / 'tensorrt'}", f"-I{PLUGINS / 'tensorrt' / 'tests'}", f"-I{PLUGINS / 'include'}",
                    f"-I{PLUGINS / 'core'}", f"-I{headers}", str(PLUGINS / "tensorrt" / "polynl_plugin.cpp"),
                    str(shim / "plugin_smoke_test.cpp"), str(PLUGINS / "core" / "polynl_core.cpp"),
                    f"-L{tmp_path / 'kernels'}", "-lpolynl_kernels_emulated", f"-Wl,-rpath,{tmp_path / 'kernels'}",
                    "-pthread", "-o", str(executable)], check=True)
    result = subprocess.run([str(executable)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout


@pytest.mark.skipif(NVCC is None, reason="nvcc not found: the TensorRT plugin links the CUDA kernels")
@pytest.mark.skipif(TENSORRT_INCLUDE is None, reason="TensorRT headers not found in the standard locations: "
                                                     "set TensorRT_ROOT to a prefix with include/NvInferRuntime.h")
def test_plugin_host_test_against_tensorrt_headers(cmake_build):
    """The plugin built against real TensorRT headers (those CMake found), loaded as TensorRT loads it
    (dlopen + getCreators) and checked on the CPU by plugins/tensorrt/tests/plugin_host_test.cpp; built a
    second time over the CPU-emulated kernels, its enqueue runs on host buffers too."""
    result = subprocess.run(["ctest", "--test-dir", str(cmake_build), "-R", "polynl_trt_plugin_host", "-V",
                             "--no-tests=error"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    summaries = [line.split(": ", 1)[1] for line in result.stdout.splitlines() if "cases passed" in line]
    print(*summaries, sep="\n")
    assert len(summaries) == 2 and any("emulated kernels" in s for s in summaries), result.stdout
    assert all(s.endswith(" 0 failed") for s in summaries), summaries
