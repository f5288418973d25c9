"""The main job: the shipped trained model exported, inspected and validated on held-out data."""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from polynl_deploy import defaults, features
from polynl_deploy.errors import SettingsError, SourceError
from polynl_deploy.export.exporter import ExportResult, export_onnx
from polynl_deploy.inspection import ModelSummary, inspect_model, to_json
from polynl_deploy.io import check_outputs, staged_directory
from polynl_deploy.settings import DemoSettings
from polynl_deploy.sources import LoadedSource, load_source
from polynl_deploy.validation import ValidationReport, compare_runners, model_input_specs, save_inputs


ARTIFACTS = ("model.onnx", "inspect.json", "inputs.npz", "report.json")
"""What ``run_demo`` writes into its output folder."""
ENGINE_ARTIFACTS = ("model.plan", "model.plan.json")
"""Written besides, where full TensorRT, a GPU and the PolyNL plugin library are present."""


@dataclass
class DemoResult:
    export: ExportResult
    summary: ModelSummary
    report: ValidationReport
    accuracy: dict[str, float]
    label_agreement: dict[str, float]
    skipped: dict[str, str] = field(default_factory=dict)  # backend -> one-line reason
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.report.passed


def _held_out(settings: DemoSettings) -> tuple[np.ndarray, np.ndarray]:
    from polynl_models.data import held_out_split
    images, labels = held_out_split()
    if settings.samples is not None:
        if settings.samples > len(images):
            raise SettingsError(f"samples: the held-out split of {settings.model} has {len(images)} samples, "
                                f"{settings.samples} were asked for")
        images, labels = images[: settings.samples], labels[: settings.samples]
    return images.numpy(), labels.numpy()


def _engine_runner(onnx_path: Path, largest_batch: int, onnx_lands_at: Path):
    """A TensorRT engine with the PolyNL plugin, built beside ``onnx_path`` (``model.plan`` and its sidecar)
    for batches of 1 to ``largest_batch``, and its runner; the sidecar names the ONNX file where it lands."""
    from polynl_deploy.tensorrt.builder import build_engine
    from polynl_deploy.tensorrt.runner import TensorRTRunner
    from polynl_deploy.tensorrt.settings import BuildSettings, ShapeOverride

    specs, _, examples = model_input_specs(onnx_path)
    batch_shape = (largest_batch, *examples[0][1:])
    plan = onnx_path.with_name(ENGINE_ARTIFACTS[0])
    built = build_engine(BuildSettings(onnx_path, plan, target="trt", show_progress=False, shape_overrides={
        specs[0].name: ShapeOverride(opt=batch_shape, max=batch_shape)}))
    built.sidecar_path.write_text(json.dumps({**built.metadata, "onnx_path": str(onnx_lands_at)}, indent=2))
    return TensorRTRunner(plan)


def _runners(onnx_path: Path, model, largest_batch: int, onnx_lands_at: Path,
             on_step) -> tuple[dict, dict[str, str]]:
    """eager, ORT on CPU, and ORT on CUDA / a TensorRT engine where present; reasons for what is skipped."""
    from polynl_deploy.backends.onnxruntime_backend import OnnxRuntimeRunner
    from polynl_deploy.backends.torch_backend import TorchRunner

    specs, outputs, _ = model_input_specs(onnx_path)
    runners = {"eager": TorchRunner(model, specs, outputs), "ort": OnnxRuntimeRunner(onnx_path, ["CPUExecutionProvider"])}
    skipped = {}
    found = features.detect()
    if found.ort_cuda:
        cuda = OnnxRuntimeRunner(onnx_path, ["CUDAExecutionProvider", "CPUExecutionProvider"])
        cuda.name = "ort-cuda"
        runners["ort-cuda"] = cuda
    else:
        skipped["ort-cuda"] = "no CUDA GPU with onnxruntime-gpu on this machine"
    if not found.tensorrt_runtime:
        skipped["trt"] = "full TensorRT (builder + runtime) and a GPU are not present on this machine"
    elif found.plugin_library is None:
        skipped["trt"] = f"PolyNL plugin library not built (set {features.PLUGIN_LIBRARY_ENV})"
    else:
        on_step(f"building a TensorRT engine with the PolyNL plugin ({found.plugin_library})")
        runners["trt"] = _engine_runner(onnx_path, largest_batch, onnx_lands_at)
    return runners, skipped


def run_demo(settings: DemoSettings, on_step=lambda message: None) -> DemoResult:
    """Export + inspect + validate the shipped model; the artifacts are built in a folder beside
    ``settings.output_dir`` and land there only if every step succeeds."""
    start = time.perf_counter()
    out = Path(settings.output_dir)
    check_outputs(directories=[out], files=[out / name for name in ARTIFACTS + ENGINE_ARTIFACTS])
    on_step(f"loading {settings.model}")
    loaded = load_source(settings.model)
    images, labels = _held_out(settings)
    _check_takes_images(loaded, images)
    onnx_path = out / "model.onnx"
    on_step(f"exporting to {onnx_path}")
    with staged_directory(out) as staging:
        staged_onnx = staging / "model.onnx"
        exported = export_onnx(loaded.model, loaded.example_inputs(), staged_onnx, source=settings.model)
        summary = inspect_model(staged_onnx)

        input_name = exported.inputs[0]["name"]
        feeds = [{input_name: images[i:i + settings.batch_size]} for i in range(0, len(images), settings.batch_size)]
        save_inputs(staging / "inputs.npz", feeds)
        runners, skipped = _runners(staged_onnx, loaded.model, min(settings.batch_size, len(images)), onnx_path,
                                    on_step)
        on_step(f"validating {', '.join(runners)} on {len(images)} held-out samples")
        report = compare_runners(staged_onnx, runners, inputs=feeds)
        # results and JSON files name where the model lands, not the staging folder
        exported.path, summary.path, report.model = onnx_path, str(onnx_path), str(onnx_path)

        accuracy, agreement = {}, {}
        predictions = {name: np.concatenate([o[exported.outputs[0]["name"]].argmax(axis=1) for o in outputs])
                       for name, outputs in report.outputs.items()}
        for name, predicted in predictions.items():
            accuracy[name] = float((predicted == labels).mean())
            if name != report.reference:
                agreement[name] = float((predicted == predictions[report.reference]).mean())
                report.extra_checks[f"labels {name} vs {report.reference}"] = {
                    "agreement": agreement[name], "required": defaults.LABEL_AGREEMENT_MIN,
                    "passed": agreement[name] >= defaults.LABEL_AGREEMENT_MIN}
        result = DemoResult(exported, summary, report, accuracy, agreement, skipped, time.perf_counter() - start)
        payload = json.loads(report.to_json())
        payload.update(accuracy=accuracy, label_agreement=agreement, skipped=skipped, seconds=result.seconds)
        (staging / "inspect.json").write_text(to_json(summary))
        (staging / "report.json").write_text(json.dumps(payload, indent=2))
    return result


def _check_takes_images(loaded: LoadedSource, images: np.ndarray) -> None:
    """Fail before anything is exported when the model's input does not fit the held-out images."""
    expected = tuple(loaded.input_shapes[0][1:]) if loaded.input_shapes else None
    if expected is not None and expected != images.shape[1:]:
        raise SourceError(f"demo model {loaded.name} takes inputs of shape {expected}, but the held-out images "
                          f"are {images.shape[1:]}: use a model trained on them, such as {defaults.DEMO_MODEL}")


def render(result: DemoResult, console) -> None:
    from rich.table import Table

    table = Table(title=f"polynl demo: {result.export.path} ({len(result.export.blocks)} Poly-NL block(s), "
                        f"plugin-ready: {'yes' if result.summary.plugin_ready else 'no'})")
    for column in ("backend", "accuracy", "labels = eager", "max abs err", "min atol", "status"):
        table.add_column(column)
    for name in result.report.backends:
        rows = [c for c in result.report.comparisons if c.backend == name]
        ok = all(c.passed for c in rows) and result.label_agreement.get(name, 1.0) >= defaults.LABEL_AGREEMENT_MIN
        table.add_row(name, f"{result.accuracy[name]:.2%}",
                      f"{result.label_agreement[name]:.2%}" if name in result.label_agreement else "reference",
                      f"{max(c.max_abs_error for c in rows):.2e}" if rows else "-",
                      f"{max(c.min_atol_to_pass for c in rows):.2e}" if rows else "-",
                      "[green]PASS" if ok else "[red]FAIL")
    console.print(table)
    for name, reason in result.skipped.items():
        console.print(f"[yellow]skipped[/] {name}: {reason}")
    console.print(f"artifacts in {result.export.path.parent}: model.onnx, inspect.json, report.json, inputs.npz "
                  f"({result.seconds:.1f} s)")
    console.print("[bold green]PASSED" if result.passed else "[bold red]FAILED")
