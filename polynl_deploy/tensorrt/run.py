"""run_model: one inference of an ONNX file (ONNX Runtime) or an engine plan (TensorRT), inputs from an
.npz or generated, outputs optionally saved to an .npz."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from polynl_deploy import defaults
from polynl_deploy.backends.base import Runner
from polynl_deploy.errors import InputError, SettingsError
from polynl_deploy.io import atomic_path, check_outputs, require_file
from polynl_deploy.defaults import ENGINE_SUFFIXES
from polynl_deploy.settings import check_seed



@dataclass
class RunResult:
    backend: str
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    input_sets: int = 1  # how many sets the inputs file holds (``input_set`` picked one)


def load_runner(model_path, plugin_library=None) -> Runner:
    path = Path(model_path)
    if path.suffix.lower() in ENGINE_SUFFIXES:
        from polynl_deploy.tensorrt.runner import TensorRTRunner
        return TensorRTRunner(path, plugin_library)
    from polynl_deploy.backends.onnxruntime_backend import OnnxRuntimeRunner
    return OnnxRuntimeRunner(path)


def read_npz_feed(path, input_set: int = 0) -> tuple[dict[str, np.ndarray], int]:
    """Arrays keyed by input name, and the number of sets in the file: a ``--save-inputs`` file (keys
    ``<set>/<name>``) holds several, of which ``input_set`` is taken."""
    from polynl_deploy.validation import load_inputs

    sets = load_inputs(path)
    if not 0 <= input_set < len(sets):
        raise InputError(f"{path}: holds input sets 0 to {len(sets) - 1}, not set {input_set}")
    return sets[input_set], len(sets)


def example_feed(runner: Runner, model_path, seed: int) -> dict[str, np.ndarray]:
    """Seeded random inputs at the export's example shape (ONNX) or the profile's opt shape (plan)."""
    from polynl_deploy.tensorrt.builder import read_sidecar
    from polynl_deploy.validation import model_input_specs, random_feed

    if Path(model_path).suffix.lower() in ENGINE_SUFFIXES:
        shapes = {p["input"]: p["opt"] for p in read_sidecar(model_path).get("profiles", [])}
    else:
        specs, _, examples = model_input_specs(model_path)
        shapes = {spec.name: list(example) for spec, example in zip(specs, examples)}
    missing = [s.name for s in runner.input_specs if s.name not in shapes and not all(
        isinstance(d, int) for d in s.shape)]
    if missing:
        raise InputError(f"{model_path}: no example shape known for inputs {missing}; give --inputs")
    shapes = {s.name: shapes.get(s.name, list(s.shape)) for s in runner.input_specs}
    return random_feed(runner.input_specs, shapes, np.random.default_rng(seed))


def run_model(model_path, *, inputs_path=None, input_set: int = 0, output_path=None, seed: int = defaults.SEED,
              plugin_library=None) -> RunResult:
    check_seed(seed)
    if input_set and inputs_path is None:
        raise SettingsError(f"input set {input_set} asked for, but no inputs file given")
    if plugin_library is not None:
        if Path(model_path).suffix.lower() not in ENGINE_SUFFIXES:
            raise SettingsError(f"a plugin library applies to TensorRT engines ({', '.join(ENGINE_SUFFIXES)}); "
                                f"{model_path} runs on ONNX Runtime, which needs none")
        require_file(plugin_library, SettingsError, prefix="plugin library ")
    check_outputs(files=[output_path], inputs=[model_path, inputs_path, plugin_library])
    runner = load_runner(model_path, plugin_library)
    if inputs_path is not None:
        require_file(inputs_path, InputError, "inputs file")
    feed, sets = read_npz_feed(inputs_path, input_set) if inputs_path else (example_feed(runner, model_path, seed), 1)
    outputs = runner.infer(feed)
    if output_path is not None:
        with atomic_path(output_path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **outputs)
    return RunResult(runner.name, feed, outputs, sets)


def render(result: RunResult, console, model_path, inputs_path=None, input_set: int = 0, output_path=None) -> None:
    """Which input set ran, and a table of each output's shape, dtype and value range."""
    from rich.table import Table

    if result.input_sets > 1:
        console.print(f"inputs: set {input_set} of the {result.input_sets} in {inputs_path} (choose with --set)")
    table = Table(title=f"{model_path} on {result.backend}")
    for column in ("output", "shape", "dtype", "min", "max", "mean"):
        table.add_column(column)
    for name, array in result.outputs.items():
        values = array.astype("float64")
        table.add_row(name, "x".join(map(str, array.shape)), str(array.dtype), f"{values.min():.4g}",
                      f"{values.max():.4g}", f"{values.mean():.4g}")
    console.print(table)
    if output_path:
        console.print(f"wrote {output_path}")
