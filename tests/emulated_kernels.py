"""libpolynl_kernels built for the CPU emulation (plugins/emulation), and a child process that runs it.

The kernel source is compiled as C++ with the emulation header, preferably with AddressSanitizer and
UBSan. ASan's runtime must be the first library a process loads, so the sanitized library cannot be
loaded into the pytest process: a child Python process started with LD_PRELOAD=libasan.so loads it and
runs each call, with requests and replies pickled over its stdin and stdout (a pipe between the test
process and the child it started; no file is ever unpickled). Its stderr (sanitizer reports, emulation
diagnostics) goes to a log that errors quote.

    python emulated_kernels.py LIBRARY     # the child; EmulatedKernels starts it
"""

import ctypes
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import kernel_abi

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
EMULATION = PLUGINS / "emulation"
CXX = shutil.which("g++") or shutil.which("c++")
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
THREAD_SANITIZE = ["-fsanitize=thread", "-fno-omit-frame-pointer"]
LIBRARY = "libpolynl_kernels_emulated.so"
NO_TOOLKIT = EMULATION / "no_toolkit"
SANITIZER_OPTIONS = {"ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "print_stacktrace=1"}


def toolkit_include_dir():
    """The CUDA toolkit's headers, used in host mode so that conversions round exactly as CUDA's; None
    where no toolkit is installed (the emulation then uses its stand-ins in NO_TOOLKIT)."""
    candidates = [Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"]
    if nvcc := shutil.which("nvcc"):
        candidates.insert(0, Path(nvcc).resolve().parents[1] / "include")
    return next((c for c in candidates if (c / "cuda_fp16.h").exists() and (c / "cuda_runtime_api.h").exists()),
                None)


def sanitizer_runtime(name="libasan.so"):
    """Path of the compiler's sanitizer runtime ``name`` (libasan.so, libtsan.so), or None when it has none."""
    path = subprocess.run([CXX, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def build(directory, header_sets, sanitizers=()):
    """Builds, for each header set ({name: folder with cuda_fp16.h and friends}), name/LIBRARY: the kernels
    (compiled as C++ through the emulation), the emulation runtime and the functional core; and, for the
    first set, name/test_emulation, the emulation's own tests. All units compile in parallel, with the
    compiler flags ``sanitizers`` (SANITIZE, THREAD_SANITIZE)."""
    flags = ["-O1", "-g1", "-fPIC", "-Wall", "-Wextra", "-Werror", f"-I{PLUGINS / 'include'}", f"-I{PLUGINS / 'core'}",
             f"-I{EMULATION}", *sanitizers]
    # nvcc's `#pragma unroll` is unknown to g++.
    kernels = ["-Wno-unknown-pragmas", str(EMULATION / "polynl_kernels_emulated.cpp")]
    units = {directory / "core.o": ["-std=c++17", str(PLUGINS / "core" / "polynl_core.cpp")]}
    links = {}
    first = next(iter(header_sets))
    for name, headers in header_sets.items():
        out = directory / name
        out.mkdir()
        units[out / "kernels.o"] = ["-std=c++20", f"-I{headers}", *kernels]
        units[out / "emulation.o"] = ["-std=c++20", f"-I{headers}", str(EMULATION / "cuda_emulation.cpp")]
        links[out / LIBRARY] = ["-shared", out / "kernels.o", out / "emulation.o", directory / "core.o"]
        if name == first:
            units[out / "test_emulation.o"] = ["-std=c++20", f"-I{headers}", f"-I{PLUGINS / 'testing'}",
                                               str(EMULATION / "tests" / "test_emulation.cpp")]
            links[out / "test_emulation"] = [out / "test_emulation.o", out / "emulation.o"]
    compiles = [subprocess.Popen([CXX, *flags, *arguments, "-c", "-o", str(obj)], stderr=subprocess.PIPE, text=True)
                for obj, arguments in units.items()]
    for process in compiles:
        _, errors = process.communicate()
        assert process.returncode == 0, errors
    for output, inputs in links.items():
        subprocess.run([CXX, "-pthread", *sanitizers, *map(str, inputs), "-o", str(output)], check=True)


class ChildCrashed(RuntimeError):
    """The child process died (a sanitizer report, an abort); the message carries its log."""


class EmulatedKernels:
    """Calls into the emulated library in a child process, which is restarted after a crash; `env` adds
    environment variables for the child (e.g. CUDA_EMULATION_SM, CUDA_EMULATION_TRACE)."""

    def __init__(self, library, preload, log_path, env=None):
        self.library, self.log_path = library, Path(log_path)
        self.env = {**os.environ, **SANITIZER_OPTIONS, "LD_PRELOAD": preload} if preload else dict(os.environ)
        self.env.update(env or {})
        self.process = None
        self.log_offset = 0

    def call(self, operation, **arguments):
        """The child's reply (a dict) to `operation`; its new log lines are in reply["log"]."""
        if self.process is None or self.process.poll() is not None:
            self._start()
        try:
            pickle.dump((operation, arguments), self.process.stdin)
            self.process.stdin.flush()
            reply = pickle.load(self.process.stdout)
        except (EOFError, BrokenPipeError):
            self.process.wait()
            raise ChildCrashed(f"the kernel process died (exit code {self.process.returncode}):\n{self._new_log()}")
        reply["log"] = self._new_log()
        return reply

    def close(self):
        if self.process is not None:
            self.process.stdin.close()
            self.process.wait(timeout=60)

    def _start(self):
        log = open(self.log_path, "ab")
        self.log_offset = self.log_path.stat().st_size
        self.process = subprocess.Popen([sys.executable, __file__, str(self.library)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=log, env=self.env)
        log.close()

    def _new_log(self):
        with open(self.log_path, "rb") as log:
            log.seek(self.log_offset)
            new = log.read()
        self.log_offset += len(new)
        return new.decode(errors="replace")


# --- The child -----------------------------------------------------------------------------------------

def _desc(fields):
    return None if fields is None else ctypes.byref(kernel_abi.Desc(*fields))


def _last_error(lib, status):
    return lib.polynl_last_error().decode() if status != kernel_abi.SUCCESS else ""


def workspace_size(lib, desc, null_result=False):
    size = ctypes.c_size_t()
    status = lib.polynl_workspace_size(_desc(desc), None if null_result else ctypes.byref(size))
    return {"status": status, "error": _last_error(lib, status), "bytes": size.value}


def resolve_path(lib, desc, null_result=False):
    path = ctypes.c_int32(-1)
    status = lib.polynl_resolve_path(_desc(desc), None if null_result else ctypes.byref(path))
    return {"status": status, "error": _last_error(lib, status), "path": path.value}


def forward(lib, libc, desc, x, weights, null=(), workspace_shortfall=0, workspace_offset=0):
    """polynl_forward on host arrays. `null` names the pointers to pass as null ("x", "weights", "y",
    "workspace"); None in `weights` nulls one weight. Y and the workspace start as all-ones bytes (NaN in
    every float type), so elements the kernels never write and accumulators they never clear show; the
    workspace is exactly as large as passed, so ASan reports any access past it."""
    y = np.empty_like(x)
    y.view(np.uint8).fill(0xFF)
    size = workspace_size(lib, desc)["bytes"] - workspace_shortfall
    workspace = ctypes.c_void_p()
    assert libc.posix_memalign(ctypes.byref(workspace), kernel_abi.WORKSPACE_ALIGNMENT,
                               max(1, size + workspace_offset)) == 0
    ctypes.memset(workspace, 0xFF, size + workspace_offset)
    pointers = (ctypes.c_void_p * len(weights))(*[None if w is None else w.ctypes.data for w in weights])
    status = lib.polynl_forward(_desc(desc), None if "x" in null else x.ctypes.data,
                                None if "weights" in null else pointers, None if "y" in null else y.ctypes.data,
                                None if "workspace" in null else workspace.value + workspace_offset, size, None)
    libc.free(workspace)
    return {"status": status, "error": _last_error(lib, status), "y": y}


def serve(library):
    """Answers (operation, arguments) requests from stdin until it closes."""
    lib = kernel_abi.load(library)
    libc = ctypes.CDLL(None)
    libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    operations = {"workspace_size": workspace_size, "resolve_path": resolve_path,
                  "forward": lambda lib, **kw: forward(lib, libc, **kw),
                  "status_string": lambda lib, status: {"text": lib.polynl_status_string(status).decode()}}
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            operation, arguments = pickle.load(requests)
        except EOFError:
            return
        pickle.dump(operations[operation](lib, **arguments), replies)
        replies.flush()


if __name__ == "__main__":
    serve(sys.argv[1])
