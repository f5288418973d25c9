"""What this machine offers (CUDA, ONNX Runtime providers, TensorRT, the plugin library). Importing
this module is light, so ``polynl --help`` never needs what is missing; ``detect()`` imports torch and
ONNX Runtime (never TensorRT) to ask them, once per process."""

import functools
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

PLUGIN_LIBRARY_ENV = "POLYNL_PLUGIN_LIBRARY"
PLUGIN_LIBRARY_NAME = "libpolynl_trt_plugin.so"
PRELOAD_LIBRARY_NAME = "libpolynl_trt_plugin_preload.so"
"""For hosts that only dlopen plugin libraries (Triton's TensorRT backend, LD_PRELOAD): registers the
creator of PLUGIN_LIBRARY_NAME, from the same folder, when it is loaded."""


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def find_built_library(env_var: str, file_name: str) -> Path | None:
    """A native library of plugins/: the file named by ``$env_var``, else a build in build/plugins (as
    plugins/README.md builds it), plugins/build or build/."""
    root = Path(__file__).resolve().parent.parent
    candidates = [os.environ.get(env_var, ""), *(str(root / folder / file_name)
                                                 for folder in ("build/plugins", "plugins/build", "build"))]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


@dataclass(frozen=True)
class Features:
    torch: str | None
    cuda: bool
    gpu_name: str | None
    onnx: str | None
    onnxruntime: str | None
    onnxruntime_gpu: str | None
    ort_providers: tuple[str, ...]
    tensorrt: str | None
    tensorrt_rtx: str | None
    plugin_library: Path | None
    kernel_library: Path | None = None
    problems: tuple[str, ...] = field(default=())

    @property
    def ort_cuda(self) -> bool:
        return self.cuda and "CUDAExecutionProvider" in self.ort_providers

    @property
    def tensorrt_runtime(self) -> bool:
        """Full TensorRT with a GPU: engines with the PolyNL plugin can be built and run."""
        return self.tensorrt is not None and self.cuda


@functools.lru_cache(maxsize=1)
def detect() -> Features:
    """Probe the machine once per process."""
    problems = []
    torch_version = _version("torch")
    cuda, gpu_name = False, None
    if torch_version:
        import torch
        cuda = torch.cuda.is_available()
        gpu_name = torch.cuda.get_device_name(0) if cuda else None
    providers: tuple[str, ...] = ()
    if importlib.util.find_spec("onnxruntime"):
        import onnxruntime
        providers = tuple(onnxruntime.get_available_providers())
    ort_cpu, ort_gpu = _version("onnxruntime"), _version("onnxruntime-gpu")
    if ort_cpu and ort_gpu:
        problems.append("both onnxruntime and onnxruntime-gpu are installed; they share one import name: "
                        "`pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu`")
    tensorrt = _version("tensorrt") or _version("tensorrt-cu13") or _version("tensorrt-cu12")
    if tensorrt is None and importlib.util.find_spec("tensorrt"):
        tensorrt = "unknown"
    rtx = _version("tensorrt-rtx-cu13-bindings") or _version("tensorrt-rtx")
    from polynl_deploy.kernels import find_kernel_library

    return Features(torch_version, cuda, gpu_name, _version("onnx"), ort_cpu, ort_gpu, providers,
                    tensorrt, rtx, find_built_library(PLUGIN_LIBRARY_ENV, PLUGIN_LIBRARY_NAME),
                    find_kernel_library(), tuple(problems))


def render(found: Features, console) -> None:
    from rich.table import Table

    from polynl_deploy.kernels import KERNELS_LIBRARY_ENV

    table = Table(title="polynl doctor")
    table.add_column("component")
    table.add_column("status")
    missing = "[yellow]not installed"
    rows = [
        ("torch", found.torch or missing),
        ("CUDA GPU", found.gpu_name or "[yellow]none (CPU only)"),
        ("onnx", found.onnx or missing),
        ("onnxruntime", found.onnxruntime or missing),
        ("onnxruntime-gpu", found.onnxruntime_gpu or missing),
        ("ONNX Runtime providers", ", ".join(found.ort_providers) or "[yellow]none"),
        ("TensorRT (full builder)", found.tensorrt or missing),
        ("TensorRT for RTX (AOT builder)", found.tensorrt_rtx or missing),
        ("PolyNL plugin library", str(found.plugin_library) if found.plugin_library
         else f"[yellow]not found (set {PLUGIN_LIBRARY_ENV})"),
        ("PolyNL CUDA kernel library", str(found.kernel_library) if found.kernel_library
         else f"[yellow]not found (set {KERNELS_LIBRARY_ENV})"),
    ]
    for name, status in rows:
        table.add_row(name, str(status))
    console.print(table)
    for problem in found.problems:
        console.print(f"[red]problem:[/] {problem}")
