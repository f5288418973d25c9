"""make_triton_repo: a Triton Inference Server model repository for an exported model.

Layout (built in a temporary folder beside ``<repo>`` and renamed into place: all or nothing)::

    <repo>/README.md                      how to start tritonserver on it: every model in <repo>
    <repo>/<name>/config.pbtxt            platform onnxruntime_onnx
    <repo>/<name>/1/model.onnx
    <repo>/<name>_trt/config.pbtxt        platform tensorrt_plan (when a plan is given)
    <repo>/<name>_trt/1/model.plan
    <repo>/<name>_trt/1/model.plan.json   the plan's sidecar (read back for the README)
"""

import json
import posixpath
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx

from polynl_deploy import defaults
from polynl_deploy.errors import ModelFileError, OutputPathError, SettingsError
from polynl_deploy.features import PLUGIN_LIBRARY_NAME, PRELOAD_LIBRARY_NAME
from polynl_deploy.settings import check_model_name
from polynl_deploy.tensorrt.precision import TARGET_TYPES
from polynl_deploy.io import check_outputs, require_file, sha256_of, staged_directory
from polynl_deploy.onnx_file import load_onnx

PLUGIN_PATH_IN_IMAGE = f"/opt/polynl/lib/{PRELOAD_LIBRARY_NAME}"
"""What Triton's ``plugins=`` option loads, where this project's Docker image puts it: the preload library,
which registers the plugin of PLUGIN_LIBRARY_NAME beside it (the option itself only dlopens a library)."""

_TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16", onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.INT8: "TYPE_INT8", onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.UINT32: "TYPE_UINT32", onnx.TensorProto.UINT64: "TYPE_UINT64",
    onnx.TensorProto.BOOL: "TYPE_BOOL", onnx.TensorProto.STRING: "TYPE_STRING",
}


@dataclass(frozen=True)
class TritonTensor:
    name: str
    data_type: str  # Triton TYPE_* name
    dims: tuple[int, ...]  # -1 for dynamic; without the batch axis when max_batch_size > 0


@dataclass(frozen=True)
class TritonModel:
    name: str
    platform: str
    directory: Path
    max_batch_size: int


@dataclass(frozen=True)
class TritonRepo:
    path: Path
    models: list[TritonModel]
    readme: Path


def make_triton_repo(repo, onnx_path, *, name: str | None = None, plan_path=None, max_batch_size: int | None = None,
                     max_queue_delay_us: int = defaults.TRITON_MAX_QUEUE_DELAY_US,
                     instances: int = defaults.TRITON_INSTANCES, onnx_on_gpu: bool = False,
                     plugin_library: str = PLUGIN_PATH_IN_IMAGE, overwrite: bool = False) -> TritonRepo:
    """Write model folders for ``onnx_path`` (and a TensorRT ``plan_path`` built from it) into ``repo``
    and rewrite its README for every model folder in it.

    ``max_batch_size`` > 0 needs a dynamic first axis on every input and output and turns on dynamic
    batching; left out it is defaults.TRITON_MAX_BATCH_SIZE, lowered for the plan to its profiles' largest batch.
    ``plugin_library`` is the library path inside the Triton container, used in the README.
    """
    repo, onnx_path = Path(repo), Path(onnx_path)
    check_outputs(directories=[repo], files=[repo / "README.md"], inputs=[onnx_path, plan_path])
    name = onnx_path.stem if name is None else name
    check_model_name(name, "triton-repo")
    onnx_batch = defaults.TRITON_MAX_BATCH_SIZE if max_batch_size is None else max_batch_size
    if not 0 <= onnx_batch < 2 ** 31 or max_queue_delay_us < 0 or instances < 1:
        raise SettingsError("triton-repo: max_batch_size must be in 0..2^31-1 (int32), max_queue_delay_us >= 0, "
                            "instances >= 1")
    model = load_onnx(onnx_path)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise ModelFileError(f"{onnx_path}: weights in external data files are not supported; "
                             "save the model as one file")
    inputs, outputs = _tensors(model, onnx_batch, onnx_path)

    targets = [(name, "onnxruntime_onnx", onnx_path, "model.onnx", "KIND_GPU" if onnx_on_gpu else "KIND_CPU",
                onnx_batch, None)]
    if plan_path is not None:
        plan_path = Path(plan_path)
        sidecar = _checked_plan_sidecar(plan_path, onnx_path)
        targets.append((f"{name}_trt", "tensorrt_plan", plan_path, "model.plan", "KIND_GPU",
                        _plan_max_batch_size(plan_path, sidecar, max_batch_size), _plan_io_type(sidecar)))
    for model_name, *_ in targets:
        if (repo / model_name).exists() and not overwrite:
            raise OutputPathError(f"triton-repo: {repo / model_name} exists; pass overwrite=True (--force) to replace it")

    written = []
    with staged_directory(repo) as staging:
        for model_name, platform, source, filename, kind, batch, float_type in targets:
            config = config_pbtxt(model_name, platform, _retyped(inputs, float_type), _retyped(outputs, float_type),
                                  batch, max_queue_delay_us, instances, kind)
            _write_model_dir(staging / model_name, config, source, filename)
            written.append(TritonModel(model_name, platform, repo / model_name, batch))
        (staging / "README.md").write_text(_readme(_repository_models(repo, staging), plugin_library))
    return TritonRepo(repo, written, repo / "README.md")


def _tensors(model: onnx.ModelProto, max_batch_size: int, path: Path) -> tuple[list[TritonTensor], list[TritonTensor]]:
    initializers = {t.name for t in model.graph.initializer}

    def convert(value: onnx.ValueInfoProto) -> TritonTensor:
        tensor_type = value.type.tensor_type
        data_type = _TRITON_TYPES.get(tensor_type.elem_type)
        if data_type is None:
            raise ModelFileError(f"{path}: {value.name!r} has an element type Triton does not serve")
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
        if max_batch_size > 0:
            if not dims or dims[0] != -1:
                raise ModelFileError(f"{path}: {value.name!r} has no dynamic batch axis (shape {list(dims)}); "
                                     "export with dynamic axes or use max_batch_size=0")
            dims = dims[1:]
        return TritonTensor(value.name, data_type, dims)

    inputs = [convert(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [convert(v) for v in model.graph.output]


def _plan_io_type(sidecar: dict) -> str | None:
    """The Triton type of the plan's float inputs and outputs where it is not the ONNX file's float32."""
    if sidecar.get("keep_io_fp32"):
        return None
    converted = TARGET_TYPES.get(sidecar.get("precision", "fp32"))  # fp32 builds keep the ONNX file's types
    return None if converted is None else _TRITON_TYPES[converted]


def _retyped(tensors: list[TritonTensor], float_type: str | None) -> list[TritonTensor]:
    if float_type is None:
        return tensors
    return [TritonTensor(t.name, float_type if t.data_type == "TYPE_FP32" else t.data_type, t.dims) for t in tensors]


def config_pbtxt(name: str, platform: str, inputs: list[TritonTensor], outputs: list[TritonTensor],
                 max_batch_size: int, max_queue_delay_us: int, instances: int, kind: str) -> str:
    """A Triton ``config.pbtxt`` (protobuf text format of inference.ModelConfig)."""
    def tensors(field: str, items: list[TritonTensor]) -> list[str]:
        lines = [f"{field} ["]
        for i, tensor in enumerate(items):
            lines += ["  {", f"    name: {json.dumps(tensor.name)}", f"    data_type: {tensor.data_type}"]
            if tensor.dims:
                lines.append(f"    dims: [ {', '.join(map(str, tensor.dims))} ]")
            else:  # Triton needs dims; a scalar (per batch item) is exposed as [ 1 ] and reshaped
                lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
            lines.append("  }" + ("," if i < len(items) - 1 else ""))
        return lines + ["]"]

    lines = [f"name: {json.dumps(name)}", f"platform: {json.dumps(platform)}", f"max_batch_size: {max_batch_size}"]
    lines += tensors("input", inputs) + tensors("output", outputs)
    if max_batch_size > 0:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {max_queue_delay_us}", "}"]
    lines += ["instance_group [", "  {", f"    count: {instances}", f"    kind: {kind}", "  }", "]"]
    return "\n".join(lines) + "\n"


def _write_model_dir(directory: Path, config: str, source: Path, filename: str) -> None:
    """``directory``/config.pbtxt and ``directory``/1/``filename`` (a copy of ``source``, and of a plan's sidecar)."""
    (directory / "1").mkdir(parents=True)
    shutil.copyfile(source, directory / "1" / filename)
    if filename == "model.plan":
        shutil.copyfile(source.with_name(source.name + ".json"), directory / "1" / "model.plan.json")
    (directory / "config.pbtxt").write_text(config)


def _repository_models(repo: Path, staging: Path) -> list[tuple[TritonModel, dict]]:
    """Every model folder (one with a config.pbtxt) that ``repo`` holds once ``staging`` has been moved
    into it, by name, each with its plan's sidecar ({} for other models or none)."""
    from polynl_deploy.tensorrt.builder import read_sidecar

    folders = {d.name: d for d in (repo.iterdir() if repo.is_dir() else ()) if (d / "config.pbtxt").is_file()}
    folders.update({d.name: d for d in staging.iterdir() if (d / "config.pbtxt").is_file()})
    models = []
    for model_name, folder in sorted(folders.items()):
        config = (folder / "config.pbtxt").read_text()
        kind = re.search(r'^(?:platform|backend):\s*"([^"]*)"', config, re.MULTILINE)
        batch = re.search(r"^max_batch_size:\s*(\d+)", config, re.MULTILINE)
        platform = kind.group(1) if kind else "unknown"
        sidecar = read_sidecar(folder / "1" / "model.plan") if platform == "tensorrt_plan" else {}
        models.append((TritonModel(model_name, platform, repo / model_name, int(batch.group(1)) if batch else 0),
                       sidecar))
    return models


def _readme(models: list[tuple[TritonModel, dict]], plugin_library: str) -> str:
    """The repository's README for ``models``, each with its plan's sidecar ({} for other models)."""
    onnx_models = [m.name for m, _ in models if m.platform == "onnxruntime_onnx"]
    plans = [(m, sidecar) for m, sidecar in models if m.platform == "tensorrt_plan"]
    # An unrecorded node count is taken to mean the plan has PolyNL layers.
    with_plugin = [m.name for m, sidecar in plans
                   if sidecar.get("polynl_nodes") != 0 and not sidecar.get("plugin_library_serialized")]
    version_compatible = [m.name for m, sidecar in plans if sidecar.get("version_compatible")]
    options = ([f"--backend-config=tensorrt,plugins={plugin_library}"] if with_plugin else []) + \
              (["--backend-config=tensorrt,version-compatible=true"] if version_compatible else [])
    lines = ["# Triton model repository (written by polynl-deploy)", "",
             "| model | platform | max_batch_size |", "|---|---|---|",
             *[f"| `{m.name}` | `{m.platform}` | {m.max_batch_size} |" for m, _ in models], ""]
    if onnx_models:
        lines += ["## ONNX model", "",
                  "Each `polynl::PolyNL` node carries a model-local function body, so the stock ONNX Runtime",
                  "backend of Triton runs `model.onnx` unmodified: no custom-op library is needed.", ""]
    lines += ["## Start Triton", ""]
    if plans:
        lines += ["Use the Triton container of the same release as the TensorRT that built each `model.plan`",
                  "(`nvcr.io/nvidia/tritonserver:<yy.mm>-py3` pairs with `nvcr.io/nvidia/tensorrt:<yy.mm>-py3`);",
                  "a plan's `max_batch_size` is at most the largest batch of its optimization profile:", ""]
        for m, sidecar in plans:
            batches = _profile_batches(sidecar)
            lines.append(f"- `{m.name}`: TensorRT {sidecar.get('tensorrt_version', '(not recorded)')}, "
                         + (f"profile batches {batches[0]} to {batches[1]}" if batches else "profile not recorded"))
        lines.append("")
    lines += ["```sh",
              "docker run --rm --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 \\",
              "  -v \"$PWD\":/models \\"]
    if with_plugin:
        lines.append(f"  -v /path/to/build/plugins:{posixpath.dirname(plugin_library)}:ro \\")
    lines += ["  nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\",
              "  " + " ".join(["tritonserver --model-repository=/models", *options]), "```", ""]
    if with_plugin:
        lines += [f"`{'`, `'.join(with_plugin)}` need(s) the PolyNL TensorRT plugin. Triton's `plugins=` option only",
                  f"loads a library, so it gets `{PRELOAD_LIBRARY_NAME}`, which registers the plugin of",
                  f"`{PLUGIN_LIBRARY_NAME}` from its own folder when it is loaded: mount the folder that holds both",
                  "(`build/plugins` after `cmake -S plugins -B build/plugins && cmake --build build/plugins` inside",
                  "`nvcr.io/nvidia/tensorrt:<yy.mm>-py3`, built against the container's TensorRT; this project's",
                  f"Docker image has them in `{posixpath.dirname(PLUGIN_PATH_IN_IMAGE)}`).", ""]
    if version_compatible:
        lines += [f"`{'`, `'.join(version_compatible)}` are version-compatible plans: `version-compatible=true` lets",
                  "Triton run the lean runtime (and plugin library) they carry. Load only plans you trust.", ""]
    if plans:
        lines += ["Engines are specific to the GPU model and TensorRT version. A plan's input and output types in",
                  "`config.pbtxt` follow its sidecar: float16 or bfloat16 for `--precision fp16|bf16` builds",
                  "without `--keep-io-fp32`.", ""]
    lines += ["## Check", "", "```sh", "curl -sf localhost:8000/v2/health/ready && echo ready",
              *[f"curl -s localhost:8000/v2/models/{m.name}" for m, _ in models], "```", ""]
    return "\n".join(lines)


def _profile_batches(sidecar: dict) -> tuple[int, int] | None:
    """The batch sizes every optimization profile of the plan accepts (first axis), or None if unrecorded."""
    try:
        profiles = sidecar["profiles"]
        return max(p["min"][0] for p in profiles), min(p["max"][0] for p in profiles)
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _plan_max_batch_size(plan_path: Path, sidecar: dict, requested: int | None) -> int:
    """The tensorrt_plan model's max_batch_size: ``requested``, or defaults.TRITON_MAX_BATCH_SIZE lowered to the
    largest batch of the plan's profiles; a requested one the profiles do not cover is refused."""
    wanted = defaults.TRITON_MAX_BATCH_SIZE if requested is None else requested
    if wanted == 0:
        return 0
    batches = _profile_batches(sidecar)
    if batches is None:
        raise ModelFileError(f"{plan_path}: {plan_path.name}.json records no optimization profiles, so the batch "
                             "sizes the engine accepts are unknown; rebuild it with `polynl build`")
    low, high = batches
    if low > 1:
        raise ModelFileError(f"{plan_path}: its optimization profile's smallest batch is {low}, but Triton's "
                             "dynamic batching also runs smaller batches; rebuild with a min batch of 1 "
                             "or use max_batch_size 0")
    if requested is not None and requested > high:
        raise SettingsError(f"triton-repo: max_batch_size {requested} exceeds the largest batch of {plan_path}'s "
                            f"optimization profile ({high}); use at most {high} or rebuild the plan with a "
                            "larger --max")
    return min(wanted, high)


def _checked_plan_sidecar(plan_path: Path, onnx_path: Path) -> dict:
    """The sidecar of a plan that ``polynl build --target trt`` wrote from ``onnx_path``: it records both
    files' hashes."""
    from polynl_deploy.tensorrt.builder import read_sidecar

    require_file(plan_path, ModelFileError, "engine file")
    sidecar_name = plan_path.name + ".json"
    recorded = read_sidecar(plan_path)
    if not recorded:
        raise ModelFileError(f"{plan_path}: no {sidecar_name} beside it; build the plan with `polynl build "
                             f"{onnx_path} -o {plan_path}`, whose sidecar records the ONNX it came from")
    if recorded.get("target", "trt") != "trt":
        raise ModelFileError(f"{plan_path} is a TensorRT-RTX engine ({sidecar_name}: target "
                             f"{recorded['target']!r}), which Triton's tensorrt_plan backend (full TensorRT) "
                             f"cannot load; build it with `polynl build {onnx_path} --target trt -o {plan_path}` "
                             "on a machine with full TensorRT")
    onnx_sha256 = sha256_of(onnx_path)
    built_from = recorded.get("onnx_path")
    if recorded.get("onnx_sha256") != onnx_sha256:
        if built_from is not None and Path(built_from).resolve() == onnx_path.resolve():
            raise ModelFileError(f"{onnx_path} changed since {plan_path} was built from it (ONNX SHA-256 "
                                 f"{str(recorded.get('onnx_sha256'))[:12]}... in {sidecar_name}, now "
                                 f"{onnx_sha256[:12]}...); rebuild the plan")
        raise ModelFileError(f"{plan_path} was built from {built_from or 'another file'!r}, "
                             f"not from {onnx_path} (ONNX SHA-256 differs; see {sidecar_name})")
    plan_sha256 = sha256_of(plan_path)
    if recorded.get("plan_sha256", plan_sha256) != plan_sha256:
        raise ModelFileError(f"{plan_path}: its bytes differ from those {sidecar_name} records (changed since the build?)")
    return recorded
