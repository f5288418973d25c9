"""libpolynl_kernels from Python: the fused forward of one PolyNL block (C ABI of
``plugins/include/polynl_kernels.h``) called through ctypes with torch tensors, and its CMake build.

Pointers are passed as they are: CUDA tensors for the CUDA library, host tensors for the
CPU-emulated build of the same kernel source (tests). Nothing here imports torch at module load.
"""

import ctypes
import os
import subprocess
from pathlib import Path
from typing import Mapping

from polynl_deploy import contract
from polynl_deploy.errors import KernelError
from polynl_deploy.features import find_built_library

KERNELS_LIBRARY_ENV = "POLYNL_KERNELS_LIBRARY"
KERNELS_LIBRARY_NAME = "libpolynl_kernels.so"
PLUGINS_DIR = Path(__file__).resolve().parent.parent / "plugins"

PATHS = {"auto": 0, "folded": 1, "unfolded": 2}
LAYOUTS = {contract.LAYOUT_MAPS: 0, contract.LAYOUT_TOKENS: 1}
DTYPES = {"float32": 0, "float16": 1, "bfloat16": 2}
STATUSES = {"success": 0, "invalid_argument": 1, "unsupported": 2, "workspace_too_small": 3, "cuda_error": 4}
WORKSPACE_ALIGNMENT = 256


class KernelDesc(ctypes.Structure):
    """PolyNLDesc of polynl_kernels.h."""

    _fields_ = [("batch", ctypes.c_int64), ("channels", ctypes.c_int64), ("inner", ctypes.c_int64),
                ("positions", ctypes.c_int64), ("layout", ctypes.c_int32), ("x_dtype", ctypes.c_int32),
                ("weight_dtype", ctypes.c_int32), ("path", ctypes.c_int32), ("alpha", ctypes.c_float)]


def find_kernel_library() -> Path | None:
    """$POLYNL_KERNELS_LIBRARY, else a build under build/plugins, plugins/build or build/."""
    return find_built_library(KERNELS_LIBRARY_ENV, KERNELS_LIBRARY_NAME)


def build_kernel_library(build_dir: Path, cuda_architectures: str, target: str = "polynl_kernels",
                         cmake_options: tuple[str, ...] = ()) -> Path:
    """Configure plugins/ with CMake in ``build_dir`` and build ``target``; the path of its shared library."""
    configure = ["cmake", "-S", str(PLUGINS_DIR), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_CUDA_ARCHITECTURES={cuda_architectures}", "-DPOLYNL_BUILD_TESTS=OFF", *cmake_options]
    build = ["cmake", "--build", str(build_dir), "--target", target, "-j", str(os.cpu_count() or 2)]
    for command in (configure, build):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise KernelError(f"`{' '.join(command)}` failed:\n{(done.stdout + done.stderr)[-4000:]}")
    library = Path(build_dir) / f"lib{target}.so"
    if not library.is_file():
        raise KernelError(f"the build of {target} produced no {library}")
    return library


def load_abi(path: Path) -> ctypes.CDLL:
    """The library at ``path`` with the argument and result types of its C functions declared."""
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise KernelError(f"cannot load the kernel library {path}: {exc}") from exc
    desc_p = ctypes.POINTER(KernelDesc)
    lib.polynl_workspace_size.argtypes = [desc_p, ctypes.POINTER(ctypes.c_size_t)]
    lib.polynl_resolve_path.argtypes = [desc_p, ctypes.POINTER(ctypes.c_int32)]
    lib.polynl_forward.argtypes = [desc_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p,
                                   ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    lib.polynl_status_string.argtypes = [ctypes.c_int]
    lib.polynl_status_string.restype = ctypes.c_char_p
    lib.polynl_last_error.restype = ctypes.c_char_p
    return lib


class KernelLibrary:
    """The loaded C ABI. ``prepare`` binds one input and weights to a reusable forward call;
    ``abi`` is the raw library for callers that need the status codes themselves."""

    def __init__(self, path: Path) -> None:
        self.path, self.abi = Path(path), load_abi(path)

    def check(self, status: int, what: str) -> None:
        """Raise KernelError for a non-zero PolyNLStatus, with the library's message."""
        if status != 0:
            raise KernelError(f"{what}: {self.abi.polynl_status_string(status).decode()} "
                              f"({self.abi.polynl_last_error().decode()})", status)

    def workspace_size(self, desc: KernelDesc) -> int:
        size = ctypes.c_size_t()
        self.check(self.abi.polynl_workspace_size(ctypes.byref(desc), ctypes.byref(size)), "polynl_workspace_size")
        return size.value

    def resolve_path(self, desc: KernelDesc) -> str:
        path = ctypes.c_int32()
        self.check(self.abi.polynl_resolve_path(ctypes.byref(desc), ctypes.byref(path)), "polynl_resolve_path")
        return next(name for name, code in PATHS.items() if code == path.value)

    def prepare(self, x, weights: Mapping[str, object], layout: str, alpha: float = 1.0,
                path: str = "auto") -> "PreparedForward":
        """A reusable call that writes Y = PolyNL(X) into one preallocated tensor and returns it.
        ``weights``: the contract inputs Wq..bo, all of one dtype (X's or float32)."""
        return PreparedForward(self, x, weights, describe(x, weights, layout, alpha, path))

    def forward(self, x, weights: Mapping[str, object], layout: str, alpha: float = 1.0, path: str = "auto"):
        """Y for one input; synchronous."""
        y = self.prepare(x, weights, layout, alpha, path)()
        if y.is_cuda:
            import torch
            torch.cuda.synchronize(y.device)
        return y


class PreparedForward:
    """One input, its weights, output and aligned workspace, bound to the library; calling it enqueues the
    forward (on torch's current CUDA stream for CUDA tensors) and returns Y. Holds every buffer it points to."""

    def __init__(self, library: KernelLibrary, x, weights: Mapping[str, object], desc: KernelDesc) -> None:
        import torch

        self.library, self.desc = library, desc
        self.x = x.contiguous()
        self.weights = [weights[name].contiguous() for name in contract.INPUT_NAMES[1:]]
        self.y = torch.empty_like(self.x)
        # Slack so that the pointer can be aligned as the ABI requires.
        self.workspace = torch.empty(library.workspace_size(desc) + WORKSPACE_ALIGNMENT, dtype=torch.uint8,
                                     device=self.x.device)
        offset = -self.workspace.data_ptr() % WORKSPACE_ALIGNMENT
        self.pointers = (ctypes.c_void_p * len(self.weights))(*[w.data_ptr() for w in self.weights])
        self.args = (ctypes.byref(desc), self.x.data_ptr(), self.pointers, self.y.data_ptr(),
                     self.workspace.data_ptr() + offset, self.workspace.numel() - offset)

    def __call__(self):
        import torch

        stream = torch.cuda.current_stream(self.x.device).cuda_stream if self.x.is_cuda else None
        self.library.check(self.library.abi.polynl_forward(*self.args, stream), "polynl_forward")
        return self.y


def describe(x, weights: Mapping[str, object], layout: str, alpha: float, path: str) -> KernelDesc:
    """The descriptor for X of shape (B, C, H, W) (maps) or (B, N, C) (tokens) and the contract weights."""
    if layout not in LAYOUTS:
        raise KernelError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    if path not in PATHS:
        raise KernelError(f"path must be one of {sorted(PATHS)}, got {path!r}")
    missing = [name for name in contract.INPUT_NAMES[1:] if name not in weights]
    if missing:
        raise KernelError(f"weights lack {missing}")
    dtypes = {name: str(w.dtype).removeprefix("torch.") for name, w in weights.items()}
    x_dtype = str(x.dtype).removeprefix("torch.")
    for name, dtype in [("X", x_dtype), *dtypes.items()]:
        if dtype not in DTYPES:
            raise KernelError(f"{name} has dtype {dtype}; the kernels take {sorted(DTYPES)}")
    if len(set(dtypes.values())) != 1:
        raise KernelError(f"all weights must share one dtype, got {dtypes}")
    if layout == contract.LAYOUT_MAPS:
        if x.dim() != 4:
            raise KernelError(f"maps layout needs X of shape (B, C, H, W), got {tuple(x.shape)}")
        batch, channels, positions = x.shape[0], x.shape[1], x.shape[2] * x.shape[3]
    else:
        if x.dim() != 3:
            raise KernelError(f"tokens layout needs X of shape (B, N, C), got {tuple(x.shape)}")
        batch, positions, channels = x.shape
    inner = weights["Wq"].shape[-1] if weights["Wq"].dim() == 2 else 0
    expected = {"Wq": (channels, inner), "bq": (inner,), "Wk": (channels, inner), "bk": (inner,),
                "Wv": (channels, inner), "bv": (inner,), "Wo": (inner, channels), "bo": (channels,)}
    wrong = {name: tuple(weights[name].shape) for name, shape in expected.items()
             if tuple(weights[name].shape) != shape or inner < 1}
    if wrong:  # the C ABI reads these sizes through raw pointers: a mismatch would read out of bounds
        raise KernelError(f"weight shapes {wrong} do not fit X of shape {tuple(x.shape)} ({layout}, C={channels}): "
                          "expected Wq, Wk, Wv (C, C'), Wo (C', C), bq, bk, bv (C'), bo (C)")
    devices = {name: str(w.device) for name, w in weights.items() if w.device != x.device}
    if devices:
        raise KernelError(f"weights {devices} are not on X's device {x.device}")
    return KernelDesc(batch, channels, inner, positions, LAYOUTS[layout], DTYPES[x_dtype],
                      DTYPES[dtypes["Wq"]], PATHS[path], float(alpha))
