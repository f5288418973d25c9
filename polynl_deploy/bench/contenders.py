"""The contenders: each turns a workload (one case's input and modules) into a timed zero-argument call.

Every call returns its output, so outputs can be compared with the family's reference
(``polynl-naive-eager`` for Poly-NL, ``floor-torch`` for the floor).
"""

import copy
import functools
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from polynl_deploy import contract, features
from polynl_deploy.bench.settings import BenchSettingsError, Case
from polynl_deploy.nn import NonLocal2d, PolyNL2d, PolyNLTokens

NONLOCAL_MODES = {"nonlocal-dot-product-eager": "dot_product",
                  "nonlocal-embedded-gaussian-eager": "embedded_gaussian"}
REFERENCES = {"polynl": "polynl-naive-eager", "floor": "floor-torch"}
BOTH = ("cpu", "cuda")


def _random_block_state(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Default initialisation plus non-trivial biases and norm statistics, in eval mode."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
        for name, buffer in module.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
    return module.eval()


@dataclass
class LayerModules:
    """The modules of one (layout, C, reduction), shared by every N and batch: exports happen once."""

    layout: str
    channels: int
    naive: nn.Module
    folded: nn.Module
    nonlocal_blocks: dict[str, NonLocal2d]
    mixing: torch.Tensor
    """A C x C matrix standing in for M in the floor's X M."""
    workdir: Path
    onnx_paths: dict[str, Path] = field(default_factory=dict)

    def onnx_path(self, kind: str) -> Path:
        """The export ``kind`` (custom-op, standard-ops or floor) of this group, written on first use.

        Exports have dynamic batch and sizes; the example has batch 2 so that no size is fixed to 1.
        """
        if kind not in self.onnx_paths:
            path = self.workdir / f"{self.layout}_c{self.channels}_{kind}.onnx"
            if kind == "floor":
                write_floor_model(path, self.layout)
            else:
                from polynl_deploy.export.exporter import export_onnx
                shape = (2, self.channels, 8, 8) if self.layout == contract.LAYOUT_MAPS else (2, 64, self.channels)
                export_onnx(self.naive, torch.randn(*shape), path, mode=kind)
            self.onnx_paths[kind] = path
        return self.onnx_paths[kind]


def build_layer_modules(layout: str, channels: int, reduction: int, seed: int, workdir: Path,
                        device: str = "cpu", dtype: str = "float32") -> LayerModules:
    """Seeded modules of one group, on ``device`` in ``dtype`` (initialised on the CPU in float32)."""
    generator = torch.Generator().manual_seed(seed)
    block_type = PolyNL2d if layout == contract.LAYOUT_MAPS else PolyNLTokens
    naive = _random_block_state(block_type(channels, reduction, norm=True, impl="naive"), generator)
    folded = copy.deepcopy(naive)
    folded.impl = "folded"
    nonlocal_blocks = {name: _random_block_state(NonLocal2d(channels, reduction, mode=mode), generator)
                       for name, mode in NONLOCAL_MODES.items()}
    mixing = torch.randn(channels, channels, generator=generator) / math.sqrt(channels)
    placement = {"device": device, "dtype": getattr(torch, dtype)}
    for module in (naive, folded, *nonlocal_blocks.values()):
        module.to(**placement)
    return LayerModules(layout, channels, naive, folded, nonlocal_blocks, mixing.to(**placement), workdir)


@dataclass
class Workload:
    """One case: its input (fixed seed) and the modules of its group."""

    case: Case
    modules: LayerModules
    threads: int
    seed: int
    device: str = "cpu"
    dtype: str = "float32"

    @cached_property
    def x(self) -> torch.Tensor:
        x = torch.randn(*self.case.input_shape, generator=torch.Generator().manual_seed(self.seed))
        return x.to(self.device, getattr(torch, self.dtype))

    @cached_property
    def x_numpy(self) -> np.ndarray:
        return self.x.numpy()

    @cached_property
    def x_as_map(self) -> torch.Tensor:
        """The input as (B, C, H, W) for NonLocal2d; token sequences become (B, C, N, 1)."""
        if self.case.layout == contract.LAYOUT_MAPS:
            return self.x
        return self.x.transpose(1, 2).unsqueeze(-1).contiguous()

    @cached_property
    def floor_operands(self) -> tuple[torch.Tensor, torch.Tensor]:
        """X flattened as the floor model takes it ((B, C, N) or (B, N, C)) and M per item (B, C, C)."""
        b, c, n = self.case.batch, self.case.channels, self.case.positions
        x = self.x.reshape(b, c, n) if self.case.layout == contract.LAYOUT_MAPS else self.x
        return x, self.modules.mixing.expand(b, c, c).contiguous()

    def ort_session(self, kind: str):
        from polynl_deploy.backends.onnxruntime_backend import session_from_onnx
        return session_from_onnx(self.modules.onnx_path(kind), ["CPUExecutionProvider"], self.threads)


def write_floor_model(path: Path, layout: str) -> None:
    """Two MatMuls: S = X^T X and Y = X M (maps: S = X X^T, Y = M^T X), dynamic sizes."""
    import onnx
    from onnx import TensorProto, helper

    maps = layout == contract.LAYOUT_MAPS
    x_shape = ["batch", "channels", "positions"] if maps else ["batch", "positions", "channels"]
    transposed = helper.make_node("Transpose", ["X"], ["X_t"], perm=[0, 2, 1])
    mixing_t = helper.make_node("Transpose", ["M"], ["M_t"], perm=[0, 2, 1])
    nodes = [transposed, helper.make_node("MatMul", ["X", "X_t"] if maps else ["X_t", "X"], ["S"])]
    nodes += [mixing_t, helper.make_node("MatMul", ["M_t", "X"], ["Y"])] if maps else [
        helper.make_node("MatMul", ["X", "M"], ["Y"])]
    graph = helper.make_graph(
        nodes, "two_gemm_floor",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape),
         helper.make_tensor_value_info("M", TensorProto.FLOAT, ["batch", "channels", "channels"])],
        [helper.make_tensor_value_info("S", TensorProto.FLOAT, ["batch", "channels", "channels"]),
         helper.make_tensor_value_info("Y", TensorProto.FLOAT, x_shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))


def as_arrays(output: Any) -> tuple[np.ndarray, ...]:
    """A contender's output as numpy arrays, in a fixed order."""
    if isinstance(output, np.ndarray):
        return (output,)
    if isinstance(output, torch.Tensor):
        output = output.detach()
        return ((output.float() if output.dtype in (torch.float16, torch.bfloat16) else output).cpu().numpy(),)
    if isinstance(output, dict):
        return tuple(np.asarray(v) for v in output.values())
    return tuple(a for item in output for a in as_arrays(item))


# --- the calls ---------------------------------------------------------------------------------------

def _eager(module_of: Callable[[Workload], nn.Module]):
    def prepare(work: Workload) -> Callable[[], Any]:
        module, x = module_of(work), work.x
        return lambda: module(x)
    return prepare


def _compiled_naive(work: Workload) -> Callable[[], Any]:
    torch._dynamo.reset()  # each case compiles afresh: no silent eager fallback past the recompile limit
    compiled, x = torch.compile(work.modules.naive, dynamic=False), work.x
    compiled(x)  # compile now, so that preparation time holds the compilation
    return lambda: compiled(x)


def _ort(kind: str):
    def prepare(work: Workload) -> Callable[[], Any]:
        session = work.ort_session(kind)
        feed = {session.get_inputs()[0].name: work.x_numpy}
        return lambda: session.run(None, feed)
    return prepare


def _nonlocal(name: str):
    def prepare(work: Workload) -> Callable[[], Any]:
        module, x = work.modules.nonlocal_blocks[name], work.x_as_map
        return lambda: module(x)
    return prepare


def _floor_torch(work: Workload) -> Callable[[], Any]:
    x, mixing = work.floor_operands
    if work.case.layout == contract.LAYOUT_MAPS:
        mixing_t = mixing.transpose(1, 2)
        return lambda: (torch.matmul(x, x.transpose(1, 2)), torch.matmul(mixing_t, x))
    return lambda: (torch.matmul(x.transpose(1, 2), x), torch.matmul(x, mixing))


def _floor_ort(work: Workload) -> Callable[[], Any]:
    session = work.ort_session("floor")
    x, mixing = work.floor_operands
    feed = {"X": np.ascontiguousarray(x.numpy()), "M": mixing.numpy()}
    return lambda: session.run(["S", "Y"], feed)


def tensorrt_engine_call(onnx_path: Path, plan: Path, x: np.ndarray) -> Callable[[], dict]:
    """An engine with the PolyNL plugin built from ``onnx_path`` into ``plan``, run on ``x``: outputs by name."""
    from polynl_deploy.tensorrt.builder import build_engine
    from polynl_deploy.tensorrt.runner import TensorRTRunner
    from polynl_deploy.tensorrt.settings import BuildSettings

    build_engine(BuildSettings(onnx_path, plan, show_progress=False))
    runner = TensorRTRunner(plan)
    feed = {runner.input_specs[0].name: x}
    return lambda: runner.infer(feed)


def _tensorrt(work: Workload) -> Callable[[], Any]:
    onnx_path = work.modules.onnx_path("custom-op")
    plan = onnx_path.with_name(f"{onnx_path.stem}_{'x'.join(map(str, work.case.input_shape))}.plan")
    return tensorrt_engine_call(onnx_path, plan, work.x_numpy)


def tensorrt_unavailable_reason() -> str | None:
    """Why the TensorRT plugin engine cannot run here, or None."""
    found = features.detect()
    if not found.cuda:
        return "no CUDA GPU on this machine (the fused CUDA kernel runs inside the TensorRT plugin)"
    if not found.tensorrt_runtime:
        return "full TensorRT (builder and runtime) is not installed"
    if found.plugin_library is None:
        return f"PolyNL plugin library not found (build plugins/ or set {features.PLUGIN_LIBRARY_ENV})"
    return None


@functools.lru_cache(maxsize=1)
def _kernel_library():
    """libpolynl_kernels: an existing build (see polynl_deploy.kernels) or one built now for this GPU."""
    from polynl_deploy.kernels import KernelLibrary, build_kernel_library, find_kernel_library

    path = find_kernel_library()
    if path is None:
        major, minor = torch.cuda.get_device_capability()
        path = build_kernel_library(Path(tempfile.mkdtemp(prefix="polynl-kernels-")), f"{major}{minor}")
    return KernelLibrary(path)


def _fused_kernel(work: Workload) -> Callable[[], Any]:
    block = work.modules.naive
    weights = {name: w.to(work.x.device, work.x.dtype) for name, w in block.folded_weights().items()}
    return _kernel_library().prepare(work.x, weights, work.case.layout, alpha=float(block.alpha))


def _fused_kernel_unavailable() -> str | None:
    from polynl_deploy.kernels import find_kernel_library

    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    if find_kernel_library() is None and not (shutil.which("cmake") and shutil.which("nvcc")):
        return "libpolynl_kernels not built and no cmake + nvcc to build it (set POLYNL_KERNELS_LIBRARY)"
    return None


def _floor_copy(work: Workload) -> Callable[[], Any]:
    """A device copy of 1.5 |X|: it reads and writes 3 |X| bytes, the traffic of two reads of X and one
    write of Y, the least any exact form moves."""
    source = torch.empty(math.ceil(1.5 * work.x.numel()), dtype=work.x.dtype, device=work.x.device).normal_()
    target = torch.empty_like(source)
    return lambda: target.copy_(source)


@dataclass(frozen=True)
class Contender:
    name: str
    family: str
    """polynl, nonlocal or floor."""
    runtime: str
    prepare: Callable[[Workload], Callable[[], Any]]
    description: str
    unavailable_reason: Callable[[], str | None] = lambda: None
    devices: tuple[str, ...] = ("cpu",)


CONTENDERS = (
    Contender("polynl-naive-eager", "polynl", "torch", _eager(lambda w: w.modules.naive),
              "Poly-NL in paper order (projections, Hadamard, pool), eager PyTorch", devices=BOTH),
    Contender("polynl-folded-eager", "polynl", "torch", _eager(lambda w: w.modules.folded),
              "Poly-NL Gram form (X^T X, then X M), eager PyTorch", devices=BOTH),
    Contender("polynl-naive-compile", "polynl", "torch", _compiled_naive,
              "torch.compile (inductor, static shapes) of the naive form", devices=BOTH),
    Contender("polynl-cuda-fused-kernel", "polynl", "cuda", _fused_kernel,
              "the fused CUDA kernel (libpolynl_kernels through its C ABI), torch CUDA tensors in and out",
              _fused_kernel_unavailable, devices=("cuda",)),
    Contender("polynl-ort-custom-op", "polynl", "onnxruntime", _ort("custom-op"),
              "custom-op export (PolyNL node + function body) on ONNX Runtime CPU"),
    Contender("polynl-ort-standard-ops", "polynl", "onnxruntime", _ort("standard-ops"),
              "standard-ops export (body inlined) on ONNX Runtime CPU"),
    Contender("polynl-tensorrt-plugin", "polynl", "tensorrt", _tensorrt,
              "custom-op export on TensorRT with the PolyNL plugin (fused CUDA kernel); numpy in and out",
              tensorrt_unavailable_reason),
    *(Contender(name, "nonlocal", "torch", _nonlocal(name), f"NonLocal2d {mode}, eager PyTorch (quadratic)",
                devices=BOTH)
      for name, mode in NONLOCAL_MODES.items()),
    Contender("floor-torch", "floor", "torch", _floor_torch, "the two GEMMs X^T X and X M as torch.matmul",
              devices=BOTH),
    Contender("floor-bandwidth", "bandwidth", "cuda", _floor_copy,
              "a device copy moving 3 |X| bytes: the memory traffic of two reads of X and one write of Y",
              devices=("cuda",)),
    Contender("floor-ort", "floor", "onnxruntime", _floor_ort,
              "the two GEMMs as a two-MatMul ONNX model on ONNX Runtime CPU"),
)
CONTENDER_NAMES = tuple(c.name for c in CONTENDERS)


def select(names: tuple[str, ...] | None, device: str = "cpu") -> list[Contender]:
    """The named contenders (None: all that run on ``device``) in canonical order (references before
    the others of their family)."""
    on_device = [c for c in CONTENDERS if device in c.devices]
    if names is None:
        return on_device
    unknown = sorted(set(names) - set(CONTENDER_NAMES))
    if unknown:
        raise BenchSettingsError(f"unknown contenders {unknown}; known: {', '.join(CONTENDER_NAMES)}")
    elsewhere = sorted(set(names) - {c.name for c in on_device})
    if elsewhere:
        raise BenchSettingsError(f"contenders {elsewhere} do not run on {device}; those that do: "
                                 f"{', '.join(c.name for c in on_device)}")
    return [c for c in on_device if c.name in names]
