"""build_engine: an exported ONNX file to a serialized TensorRT engine (plan) plus a sidecar JSON.

Target ``trt``: full TensorRT on the GPU that will run the engine, PolyNL nodes served by the plugin
library (``OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE`` makes the plugin win over the model-local function).
Target ``rtx``: TensorRT for RTX, ahead of time for the requested SMs, no GPU needed. It has no plugin
layers: its parser imports each PolyNL node's model-local function body (standard ops), specialized
for the node's form at the profile's opt shape (``specialize_bodies``): its builder refuses the
body's run-time If on N (data-dependent shapes inside a conditional).
"""

import contextlib
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import onnx

from polynl_deploy import contract, features
from polynl_deploy.errors import BackendUnavailableError, EngineBuildError, ModelFileError
from polynl_deploy.export.exporter import specialize_bodies
from polynl_deploy.io import atomic_path, require_file, sha256_of, write_bytes_atomic
from polynl_deploy.onnx_file import load_onnx, shapes_at
from polynl_deploy.tensorrt.precision import convert_precision
from polynl_deploy.tensorrt.profiles import Profile, profiles_for_onnx
from polynl_deploy.tensorrt.settings import BuildSettings

log = logging.getLogger(__name__)

GRAPH_PLUGIN = "custom-op (PolyNL plugin)"
GRAPH_FUNCTION_BODY = ("custom-op (the parser imports each PolyNL node's model-local function body, "
                       "its form fixed at the profile's opt shape)")
GRAPH_AS_EXPORTED = "standard-ops (as exported)"
_REPEATED_NODE_NAME = "already exists, the output tensors of this new instance will not be queryable"


@dataclass
class BuildResult:
    plan_path: Path
    sidecar_path: Path
    metadata: dict
    engine_bytes: int
    build_seconds: float


def import_tensorrt(target: str):
    """The TensorRT Python module for ``target``, or BackendUnavailableError saying how to get it."""
    try:
        if target == "rtx":
            import tensorrt_rtx_bindings as trt
        else:
            import tensorrt as trt
    except ImportError as exc:
        hint = ("pip install 'polynl-deploy[tensorrt-rtx]' (tensorrt-rtx-cu13-libs and -bindings)"
                if target == "rtx" else "install TensorRT 10.15+ (pip install tensorrt) on a machine with a GPU, "
                "or build ahead of time with --target rtx")
        raise BackendUnavailableError(f"target {target!r}: TensorRT is not importable ({exc}); {hint}") from exc
    return trt


def count_polynl_nodes(model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node if contract.is_polynl_node(n))


def positions_at(model: onnx.ModelProto, profiles: list[Profile]) -> dict[str, int]:
    """N of each PolyNL node (by name) with every input at its profile's opt shape, from ONNX shape
    inference; nodes whose X shape stays unknown are left out."""
    shapes = shapes_at(model, {p.input: p.opt for p in profiles})
    positions = {}
    for node in model.graph.node:
        if contract.is_polynl_node(node):
            dims = shapes.get(node.input[0], ())
            spatial = dims[2:] if len(dims) == 4 else dims[1:2]
            if spatial and all(spatial):
                positions[node.name] = math.prod(spatial)
    return positions


def prepare_onnx(model: onnx.ModelProto, settings: BuildSettings,
                 profiles: list[Profile]) -> tuple[onnx.ModelProto, str, dict[str, int]]:
    """The graph the parser gets, converted to the build precision, and for rtx the N at which each
    node's form was fixed. Without plugin layers (rtx) the parser imports the PolyNL function bodies,
    which keep their float32 statistics."""
    converted = convert_precision(model, settings.precision, keep_io_fp32=settings.keep_io_fp32)
    if not count_polynl_nodes(model):
        return converted, GRAPH_AS_EXPORTED, {}
    if settings.target == "rtx":
        positions = positions_at(model, profiles)
        return specialize_bodies(converted, positions), GRAPH_FUNCTION_BODY, positions
    return converted, GRAPH_PLUGIN, {}


def resolve_plugin_library(settings: BuildSettings, polynl_nodes: int) -> Path | None:
    """The plugin library for target trt: --plugin, else POLYNL_PLUGIN_LIBRARY or a build (``features``)."""
    library = settings.plugin_library or features.detect().plugin_library
    if library is not None:
        require_file(library, BackendUnavailableError, prefix="plugin library ")
    if library is None and polynl_nodes:
        raise BackendUnavailableError(
            f"{settings.onnx_path} has {polynl_nodes} PolyNL node(s) and target 'trt' needs the plugin library "
            f"{features.PLUGIN_LIBRARY_NAME}: build plugins/ or set {features.PLUGIN_LIBRARY_ENV} "
            "(or build with --target rtx, or export with --mode standard-ops)")
    return Path(library) if library else None


def load_plugin_library(trt, library: Path) -> None:
    """Registers the PolyNL creator from ``library``, once per process: TensorRT's load_library returns
    None when a creator of the library is already registered (a second build or runner in one process)."""
    registry = trt.get_plugin_registry()
    if registry.get_creator(contract.OP_TYPE, contract.PLUGIN_VERSION, contract.PLUGIN_NAMESPACE) is not None:
        log.debug("PolyNL plugin creator already registered; not loading %s again", library)
        return
    try:
        handle = registry.load_library(str(library))
    except Exception as exc:  # the bindings raise RuntimeError/TypeError depending on the version
        raise BackendUnavailableError(f"plugin library {library}: TensorRT cannot load it ({exc})") from exc
    if handle is None:
        raise BackendUnavailableError(f"plugin library {library}: TensorRT cannot load it (see the log above)")


def _collecting_logger(trt):
    """A TensorRT logger that keeps warnings and errors (for error messages) and forwards them to logging."""

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity, msg) -> None:
            if severity > trt.ILogger.Severity.WARNING:
                return
            if _REPEATED_NODE_NAME in msg:  # each PolyNL node imports a body whose node names repeat: benign
                log.debug("TensorRT: %s", msg)
                return
            self.messages.append(msg)
            log.warning("TensorRT: %s", msg)

    return CollectingLogger()


def _progress_monitor(trt, progress):
    """An IProgressMonitor driving one rich progress bar per active build phase."""

    class RichProgressMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.tasks: dict[str, int] = {}
            self.interrupted = False

        # TensorRT calls these from its build; an exception would stop in the bindings (which print it
        # and go on), so Ctrl-C is kept and answered by cancelling the build at the next step.
        @contextlib.contextmanager
        def _keeping_interrupt(self):
            try:
                yield
            except KeyboardInterrupt:
                self.interrupted = True

        def phase_start(self, phase_name, parent_phase, num_steps) -> None:
            with self._keeping_interrupt():
                indent = "  " if parent_phase else ""
                self.tasks[phase_name] = progress.add_task(f"{indent}{phase_name}", total=max(num_steps, 1))

        def step_complete(self, phase_name, step) -> bool:
            with self._keeping_interrupt():
                if phase_name in self.tasks:
                    progress.update(self.tasks[phase_name], completed=step + 1)
            return not self.interrupted  # False cancels the build

        def phase_finish(self, phase_name) -> None:
            with self._keeping_interrupt():
                task = self.tasks.pop(phase_name, None)
                if task is not None:
                    progress.remove_task(task)

    return RichProgressMonitor()


def parse_errors(parser) -> list[str]:
    lines = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        where = f"node {error.node()} {error.node_name()!r} ({error.node_operator()})" if error.node() >= 0 else "model"
        lines.append(f"{where}: {error.desc()}")
    return lines


def _create_network(trt, builder):
    """A strongly typed network where the flag exists (TensorRT 10); TensorRT 11 / RTX type strongly anyway."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return builder.create_network(0 if flag is None else 1 << int(flag))


def _configure(trt, builder, config, settings: BuildSettings, profiles: list[Profile],
               plugin_library: Path | None) -> None:
    profile = builder.create_optimization_profile()
    for p in profiles:
        profile.set_shape(p.input, p.min, p.opt, p.max)
    if config.add_optimization_profile(profile) < 0:
        raise EngineBuildError(f"{settings.onnx_path}: TensorRT refused the optimization profile "
                               f"{[p.to_json() for p in profiles]}")
    if not settings.tf32:
        # TensorRT lets float32 math round to TF32 (10-bit mantissas) unless told not to: float32 engines
        # then hold float32 tolerances, and the fp16/bf16 engines' float32 statistics stay float32.
        config.clear_flag(trt.BuilderFlag.TF32)
    if settings.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    if settings.target == "rtx":
        config.num_compute_capabilities = len(settings.sms)
        for index, sm in enumerate(settings.sms):
            config.set_compute_capability(getattr(trt.ComputeCapability, f"SM{sm}"), index)
    elif settings.timing_cache:
        cache = _read_timing_cache(config, settings.timing_cache)
        if not config.set_timing_cache(cache, False):
            log.warning("timing cache %s: recorded for another GPU or TensorRT; building with an empty one",
                        settings.timing_cache)
            config.set_timing_cache(config.create_timing_cache(b""), False)
    if settings.version_compatible:
        # A later TensorRT runs the plan with its embedded lean runtime (unless excluded) and loads the
        # plugin library serialized into it: the library links no libnvinfer, as that requires.
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        if settings.exclude_lean_runtime:
            config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
        if plugin_library:
            config.plugins_to_serialize = [str(plugin_library)]


def _read_timing_cache(config, path: Path):
    """The timing cache in ``path`` (an empty one where there is none, or it cannot be read)."""
    cached = path.read_bytes() if path.is_file() else b""
    try:
        return config.create_timing_cache(cached)
    except (TypeError, RuntimeError) as exc:
        log.warning("timing cache %s cannot be read (%s); building with an empty one", path, exc)
        return config.create_timing_cache(b"")


def _save_timing_cache(config, path: Path) -> None:
    """Write the build's timing cache, merged with what another build may have written to ``path`` since."""
    cache = config.get_timing_cache()
    if cache is None:
        return
    if path.is_file():
        cache.combine(_read_timing_cache(config, path), True)
    write_bytes_atomic(path, bytes(memoryview(cache.serialize())))


def _gpu_description(onnx_path: Path) -> dict:
    """The GPU the engine is built for (and will run on), or BackendUnavailableError before any work."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"{onnx_path}: target 'trt' builds on the GPU that will run the engine, and torch "
            f"{torch.__version__} sees no CUDA GPU (a CPU-only torch wheel?); or build with --target rtx")
    major, minor = torch.cuda.get_device_capability(0)
    return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}


def build_engine(settings: BuildSettings) -> BuildResult:
    """Parse, build and serialize; write the plan unchanged and ``<plan>.json`` describing the build."""
    trt = import_tensorrt(settings.target)
    model = load_onnx(settings.onnx_path)
    polynl_nodes = count_polynl_nodes(model)
    plugin_library = None
    if settings.target == "trt":
        target_description = _gpu_description(settings.onnx_path)
        plugin_library = resolve_plugin_library(settings, polynl_nodes)
        if plugin_library:
            load_plugin_library(trt, plugin_library)
    else:
        target_description = {"compute_capabilities": [f"SM{sm}" for sm in settings.sms]}
    profiles = profiles_for_onnx(settings.onnx_path, max_scale=settings.max_scale, overrides=settings.shape_overrides)
    prepared, graph_form, form_positions = prepare_onnx(model, settings, profiles)

    logger = _collecting_logger(trt)
    try:  # the bindings raise where createInferBuilder returns null
        builder = trt.Builder(logger)
    except (TypeError, RuntimeError) as exc:
        raise BackendUnavailableError(f"TensorRT {trt.__version__}: cannot create a builder (no usable GPU?): "
                                      + "; ".join([*logger.messages, str(exc)])) from exc
    network = _create_network(trt, builder)
    parser = trt.OnnxParser(network, logger)
    if settings.target == "trt" and hasattr(trt.OnnxParserFlag, "ENABLE_PLUGIN_OVERRIDE"):
        parser.set_flag(trt.OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE)
    if not parser.parse(prepared.SerializeToString(), str(settings.onnx_path)):
        raise ModelFileError(f"{settings.onnx_path}: the TensorRT {trt.__version__} ONNX parser rejected the "
                             f"{graph_form} graph:\n  " + "\n  ".join(parse_errors(parser)))
    config = builder.create_builder_config()
    _configure(trt, builder, config, settings, profiles, plugin_library)

    started = time.perf_counter()
    serialized = _build_with_progress(trt, builder, network, config, settings.show_progress)
    build_seconds = time.perf_counter() - started
    if serialized is None:
        hint = ""
        if graph_form == GRAPH_AS_EXPORTED and any("Data-dependent shapes" in m for m in logger.messages):
            hint = ("\n  (a standard-ops export keeps its blocks' run-time choice of form by N, which this builder "
                    "refuses inside a conditional: export with --mode custom-op or --static, or fix the spatial "
                    "dims with --min/--opt/--max)")
        raise EngineBuildError(f"{settings.onnx_path}: TensorRT {trt.__version__} could not build an engine:\n  "
                               + "\n  ".join(logger.messages[-10:] or ["(no message from TensorRT)"]) + hint)
    plan = memoryview(serialized)
    metadata = {
        "target": settings.target,
        "tensorrt_version": trt.__version__,
        **target_description,
        "precision": settings.precision,
        "keep_io_fp32": settings.keep_io_fp32,
        "tf32": settings.tf32,
        "graph": graph_form,
        "polynl_nodes": polynl_nodes,
        **({"forms_fixed_at_positions": form_positions} if settings.target == "rtx" and polynl_nodes else {}),
        "profiles": [p.to_json() for p in profiles],
        "onnx_path": str(settings.onnx_path),
        "onnx_sha256": sha256_of(settings.onnx_path),
        "plugin_library": str(plugin_library) if plugin_library else None,
        "plugin_library_sha256": sha256_of(plugin_library) if plugin_library else None,
        "version_compatible": settings.version_compatible,
        "lean_runtime_embedded": settings.version_compatible and not settings.exclude_lean_runtime,
        "plugin_library_serialized": settings.version_compatible and plugin_library is not None,
        "timing_cache": str(settings.timing_cache) if settings.timing_cache and settings.target == "trt" else None,
        "engine_bytes": plan.nbytes,
        "plan_sha256": hashlib.sha256(memoryview(plan)).hexdigest(),
        "build_seconds": round(build_seconds, 3),
    }
    # nested: each is renamed into place only after both were written, so a failure leaves neither
    with atomic_path(settings.plan_path) as plan_tmp, atomic_path(settings.sidecar_path) as sidecar_tmp:
        plan_tmp.write_bytes(plan)
        sidecar_tmp.write_bytes(json.dumps(metadata, indent=2).encode())
    if settings.timing_cache and settings.target == "trt":
        _save_timing_cache(config, settings.timing_cache)
    return BuildResult(settings.plan_path, settings.sidecar_path, metadata, plan.nbytes, build_seconds)


def _build_with_progress(trt, builder, network, config, show_progress: bool):
    if not show_progress:
        return builder.build_serialized_network(network, config)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        monitor = _progress_monitor(trt, progress)
        config.progress_monitor = monitor
        try:
            serialized = builder.build_serialized_network(network, config)
        finally:
            config.progress_monitor = None
    if monitor.interrupted:
        raise KeyboardInterrupt
    return serialized


def read_sidecar(plan_path) -> dict:
    """The build description next to a plan (``<plan>.json``), or {} when there is none."""
    sidecar = Path(plan_path).with_name(Path(plan_path).name + ".json")
    if not sidecar.is_file():
        return {}
    try:
        return json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{sidecar}: unreadable engine sidecar ({exc})") from exc


def render(result: BuildResult, console) -> None:
    """What was built, for whom, from which graph, and its profiles."""
    meta = result.metadata
    where = ", ".join(meta["compute_capabilities"]) if "compute_capabilities" in meta else \
        f"{meta['gpu']} (SM {meta['compute_capability']})"
    console.print(f"wrote [bold]{result.plan_path}[/] ({result.engine_bytes / 1e6:.1f} MB, {meta['precision']}, "
                  f"TensorRT {meta['tensorrt_version']}, for {where}) in {result.build_seconds:.1f} s")
    console.print(f"  graph: {meta['graph']}; build record: {result.sidecar_path}")
    for profile in meta["profiles"]:
        console.print(f"  {profile['input']}: min {profile['min']}, opt {profile['opt']}, max {profile['max']}")
