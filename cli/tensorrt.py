"""``polynl build`` and ``polynl run`` (registered in app.py).

TensorRT, torch and onnx are imported inside the commands only.
"""

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from polynl_deploy import defaults

console = Console()

ShapesOpt = Optional[list[str]]


def build(
    onnx_path: Annotated[Path, typer.Argument(help="exported ONNX file")],
    output: Annotated[Path, typer.Option("--output", "-o", help="engine plan to write (plus <plan>.json)")],
    target: Annotated[str, typer.Option(help="trt: full TensorRT + PolyNL plugin on this GPU; "
                                              "rtx: TensorRT for RTX, ahead of time, no GPU needed")] = "trt",
    sm: Annotated[Optional[list[int]], typer.Option(
        "--sm", help="rtx: compute capability to build for (75, 80, 86, 89, 120, 121; repeatable)")] = None,
    precision: Annotated[str, typer.Option(help="fp32, fp16 or bf16 (the ONNX is converted first)")] = "fp32",
    keep_io_fp32: Annotated[bool, typer.Option("--keep-io-fp32", help="fp16/bf16 inside, float32 I/O")] = False,
    tf32: Annotated[bool, typer.Option("--tf32", help="let float32 math round to TF32 (faster, ~1e-3 error)")] = False,
    min_shape: Annotated[ShapesOpt, typer.Option("--min", help="profile min, [INPUT:]1x3x8x8")] = None,
    opt_shape: Annotated[ShapesOpt, typer.Option("--opt", help="profile opt (default: the export's example)")] = None,
    max_shape: Annotated[ShapesOpt, typer.Option("--max", help="profile max (default: 2x the example)")] = None,
    timing_cache: Annotated[Optional[Path], typer.Option(help="timing cache to read and update (trt)")] = None,
    workspace_mib: Annotated[Optional[int], typer.Option(
        "--workspace-mib", help="workspace limit, MiB (default: TensorRT's, the GPU's memory)")] = None,
    plugin: Annotated[Optional[Path], typer.Option(help="PolyNL plugin library (trt; default: "
                                                        "$POLYNL_PLUGIN_LIBRARY or plugins/build)")] = None,
    version_compatible: Annotated[bool, typer.Option(
        "--version-compatible",
        help="trt: a plan later TensorRT versions run, with the plugin library inside")] = False,
    exclude_lean_runtime: Annotated[bool, typer.Option(
        "--exclude-lean-runtime", help="with --version-compatible: leave the lean runtime out of the plan")] = False,
):
    """Build a TensorRT engine from an exported ONNX file."""
    from polynl_deploy.tensorrt.builder import build_engine, render
    from polynl_deploy.tensorrt.settings import BuildSettings, parse_shape_overrides

    settings = BuildSettings(onnx_path, output, target=target, precision=precision, keep_io_fp32=keep_io_fp32,
                             tf32=tf32, shape_overrides=parse_shape_overrides(min_shape, opt_shape, max_shape),
                             timing_cache=timing_cache,
                             workspace_bytes=None if workspace_mib is None else workspace_mib * (1 << 20),
                             sms=tuple(sm or (89,)), plugin_library=plugin, version_compatible=version_compatible,
                             exclude_lean_runtime=exclude_lean_runtime)
    render(build_engine(settings), console)


def run(
    model: Annotated[Path, typer.Argument(help=".onnx (ONNX Runtime) or .plan (TensorRT)")],
    inputs: Annotated[Optional[Path], typer.Option(help=".npz of inputs by name (default: seeded random)")] = None,
    input_set: Annotated[int, typer.Option("--set", help="which set of a --save-inputs file (several sets)")] = 0,
    output: Annotated[Optional[Path], typer.Option(help="write the outputs to this .npz")] = None,
    seed: int = defaults.SEED,
    plugin: Annotated[Optional[Path], typer.Option(help="PolyNL plugin library for .plan files")] = None,
):
    """Run one inference and summarise the outputs."""
    from polynl_deploy.tensorrt.run import render, run_model

    result = run_model(model, inputs_path=inputs, input_set=input_set, output_path=output, seed=seed,
                       plugin_library=plugin)
    render(result, console, model, inputs, input_set, output)
