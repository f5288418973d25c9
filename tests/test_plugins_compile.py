"""The CUDA kernel library compiles with nvcc for every supported architecture (compile only, no GPU),
and the CMake project configures and builds its CPU parts and kernels."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import emulated_kernels
from polynl_deploy import contract

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
    emulated_kernels.build(tmp_path, {"kernels": headers})
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
    # The preload library compiles against the same headers and leaves loading libnvinfer to run time.
    preload = cmake_build / "libpolynl_trt_plugin_preload.so"
    needed = subprocess.run(["readelf", "-d", str(preload)], capture_output=True, text=True, check=True).stdout
    assert "libnvinfer" not in needed, needed


@pytest.fixture(scope="module")
def preload_libraries(tmp_path_factory):
    """Against the compile-check shim with the CPU-emulated kernels: plugin/libpolynl_trt_plugin.so,
    plugin/libpolynl_trt_plugin_preload.so beside it, and trt/libnvinfer.so.10, a stand-in runtime whose
    registry records registrations (tensorrt/tests/fake_nvinfer.cpp)."""
    root = tmp_path_factory.mktemp("preload")
    headers = emulated_kernels.toolkit_include_dir() or emulated_kernels.NO_TOOLKIT
    emulated_kernels.build(root, {"kernels": headers})
    shim, tensorrt = PLUGINS / "tensorrt" / "compile_check_shim", PLUGINS / "tensorrt"
    (root / "plugin").mkdir()
    (root / "trt").mkdir()
    common = [emulated_kernels.CXX, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
              "-fvisibility=hidden", f"-I{shim}", f"-I{PLUGINS / 'include'}", f"-I{PLUGINS / 'core'}", f"-I{headers}"]
    subprocess.run([*common, str(tensorrt / "polynl_plugin.cpp"), str(PLUGINS / "core" / "polynl_core.cpp"),
                    f"-Wl,--version-script={tensorrt / 'polynl_plugin.map'}", f"-L{root / 'kernels'}",
                    "-lpolynl_kernels_emulated", f"-Wl,-rpath,{root / 'kernels'}", "-pthread",
                    "-o", str(root / "plugin" / "libpolynl_trt_plugin.so")], check=True)
    subprocess.run([*common, '-DPOLYNL_NVINFER_SONAME="libnvinfer.so.10"', str(tensorrt / "register_at_load.cpp"),
                    "-ldl", "-o", str(root / "plugin" / "libpolynl_trt_plugin_preload.so")], check=True)
    subprocess.run([*common, str(tensorrt / "tests" / "fake_nvinfer.cpp"), "-Wl,-soname,libnvinfer.so.10",
                    "-o", str(root / "trt" / "libnvinfer.so.10")], check=True)
    return root


def _registrations(code: str, **env) -> subprocess.CompletedProcess:
    """Runs ``code`` (which prints the stand-in registry's records) in a fresh Python."""
    return subprocess.run([sys.executable, "-c", "import ctypes\n" + code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


@pytest.mark.skipif(emulated_kernels.CXX is None, reason="no host C++ compiler")
def test_preload_library_registers_the_creator_when_loaded(preload_libraries):
    """Triton's `--backend-config=tensorrt,plugins=` dlopens the library after TensorRT is loaded; LD_PRELOAD
    loads it before: either way the creator is registered once, with the contract's name, version and
    namespace. Without libpolynl_trt_plugin.so beside it, it says so and the process carries on."""
    plugin, trt = preload_libraries / "plugin", preload_libraries / "trt"
    expected = f"{contract.OP_TYPE}/{contract.PLUGIN_VERSION}/{contract.PLUGIN_NAMESPACE}/{contract.PLUGIN_NAMESPACE};"
    read = ("runtime.registeredCreators.restype = ctypes.c_char_p\n"
            "print(runtime.registeredCreators().decode())\n")
    triton = _registrations(f"runtime = ctypes.CDLL({str(trt / 'libnvinfer.so.10')!r}, ctypes.RTLD_GLOBAL)\n"
                            f"ctypes.CDLL({str(plugin / 'libpolynl_trt_plugin_preload.so')!r})\n" + read)
    assert triton.returncode == 0 and triton.stdout.strip() == expected, triton.stdout + triton.stderr
    preloaded = _registrations("runtime = ctypes.CDLL('libnvinfer.so.10')\n" + read, LD_LIBRARY_PATH=str(trt),
                               LD_PRELOAD=str(plugin / "libpolynl_trt_plugin_preload.so"))
    assert preloaded.returncode == 0 and preloaded.stdout.strip() == expected, preloaded.stdout + preloaded.stderr

    alone = preload_libraries / "alone"
    alone.mkdir(exist_ok=True)
    shutil.copy(plugin / "libpolynl_trt_plugin_preload.so", alone)
    missing = _registrations(f"runtime = ctypes.CDLL({str(trt / 'libnvinfer.so.10')!r}, ctypes.RTLD_GLOBAL)\n"
                             f"ctypes.CDLL({str(alone / 'libpolynl_trt_plugin_preload.so')!r})\n" + read)
    assert missing.returncode == 0 and missing.stdout.strip() == "", missing.stdout + missing.stderr
    assert "cannot load the PolyNL plugin library" in missing.stderr and "libpolynl_trt_plugin.so" in missing.stderr
