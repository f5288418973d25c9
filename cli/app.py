"""``polynl``: each command builds a settings object and calls one library function.

Imports of torch, onnx and onnxruntime happen inside the commands, so ``polynl --help``
works on any machine. Errors of the toolkit exit with code 2, failed checks with code 1.
"""

import copy
import functools
import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from polynl_deploy import defaults

app = typer.Typer(name="polynl", help="Deploy Poly-NL models: export to ONNX, run, validate, inspect.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
console = Console()
err_console = Console(stderr=True)

EXIT_FAILED_CHECK = 1
EXIT_BAD_INPUT = 2


def handles_errors(command):
    """Turn PolyNLError into a one-line message on stderr and exit code 2."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from polynl_deploy.errors import PolyNLError
        try:
            return command(*args, **kwargs)
        except PolyNLError as exc:
            from rich.text import Text  # a Text is printed as is: no markup or :emoji: codes in messages
            err_console.print(Text.assemble(("error", "bold red"), f" ({type(exc).__name__}): {exc}"),
                              highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
    return wrapper


def _shapes(values: Optional[list[str]]):
    from polynl_deploy.sources import parse_shape
    return [parse_shape(v) for v in values] if values else None


SourceArg = Annotated[str, typer.Argument(help="package.module:factory, or a zoo name (see `polynl models`)")]
CheckpointOpt = Annotated[Optional[Path], typer.Option(
    "--checkpoint", "-c", help="weights: .safetensors, or a torch state_dict (loaded with weights_only=True)")]


@app.command()
@handles_errors
def export(
    source: SourceArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write")],
    checkpoint: CheckpointOpt = None,
    input_shape: Annotated[Optional[list[str]], typer.Option(
        "--input-shape", help="example input shape with batch, e.g. 1x3x224x224 (repeat per input)")] = None,
    opset: Annotated[Optional[int], typer.Option(help="default-domain ONNX opset (18 or later; default 20)")] = None,
    mode: Annotated[str, typer.Option(help="custom-op (one PolyNL node per block) or standard-ops")] = "custom-op",
    static: Annotated[bool, typer.Option("--static", help="fix every dimension to the example shape")] = False,
):
    """Export a model to ONNX; every Poly-NL block becomes one polynl::PolyNL node."""
    from polynl_deploy import defaults
    from polynl_deploy.settings import ExportSettings
    from polynl_deploy.workflows import run_export

    result = run_export(ExportSettings(source=source, output=output, checkpoint=checkpoint,
                                       input_shapes=_shapes(input_shape),
                                       opset=defaults.OPSET if opset is None else opset, mode=mode,
                                       dynamic=not static))
    console.print(f"wrote [bold]{result.path}[/] ({result.mode}, opset {result.opset}, "
                  f"{len(result.blocks)} Poly-NL block(s))")
    for block in result.blocks:
        console.print(f"  {block.module}: {block.layout}, C={block.channels}, C'={block.inner_channels}, "
                      f"function body: {block.form}"
                      + (f" from N = {block.folded_from_positions} positions on, unfolded below"
                         if block.folded_from_positions else ""))


@app.command()
@handles_errors
def validate(
    onnx_path: Annotated[Path, typer.Argument(help="exported ONNX file")],
    source: Annotated[Optional[str], typer.Option(help="the PyTorch model (reference), as for export")] = None,
    checkpoint: CheckpointOpt = None,
    backends: Annotated[str, typer.Option(help="comma-separated from eager, ort, trt; the first is the reference")
                        ] = "eager,ort",
    engine: Annotated[Optional[Path], typer.Option(help="TensorRT plan for backend trt (default: ONNX path "
                                                        "with .plan)")] = None,
    seed: int = defaults.SEED,
    atol: Annotated[Optional[float], typer.Option(help="absolute tolerance for every output")] = None,
    rtol: Annotated[Optional[float], typer.Option(help="relative tolerance for every output")] = None,
    tolerance: Annotated[Optional[list[str]], typer.Option(help="per output: NAME:ATOL:RTOL")] = None,
    report: Annotated[Optional[Path], typer.Option(help="write the JSON report here")] = None,
    save_inputs: Annotated[Optional[Path], typer.Option(help="save the inputs used (.npz)")] = None,
    load_inputs: Annotated[Optional[Path], typer.Option(help="use inputs saved with --save-inputs")] = None,
):
    """Run the same inputs through several backends and compare every output."""
    from polynl_deploy.settings import ValidateSettings, parse_tolerances
    from polynl_deploy.validation import render
    from polynl_deploy.workflows import run_validate

    settings = ValidateSettings(onnx_path=onnx_path, source=source, checkpoint=checkpoint,
                                backends=tuple(b.strip() for b in backends.split(",")), seed=seed, atol=atol,
                                rtol=rtol, per_output=parse_tolerances(tolerance), report=report,
                                save_inputs=save_inputs, load_inputs=load_inputs, engine=engine)
    result = run_validate(settings)
    render(result, console)
    if not result.passed:
        raise typer.Exit(EXIT_FAILED_CHECK)


@app.command()
@handles_errors
def inspect(
    onnx_path: Annotated[Path, typer.Argument(help="ONNX file")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
):
    """Show PolyNL nodes, opsets, functions, and whether the file is ready for the TensorRT plugin."""
    from polynl_deploy.inspection import inspect_model, render, to_json

    summary = inspect_model(onnx_path)
    if as_json:
        print(to_json(summary))
    else:
        render(summary, console)


@app.command()
def doctor(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False):
    """Versions and capabilities of this machine: torch, onnx, ONNX Runtime providers, GPU, TensorRT."""
    from polynl_deploy.features import detect, render

    found = detect()
    if as_json:
        from dataclasses import asdict
        print(json.dumps({**asdict(found), "ort_cuda": found.ort_cuda,
                          "tensorrt_runtime": found.tensorrt_runtime}, default=str, indent=2))
    else:
        render(found, console)
    if found.problems:
        raise typer.Exit(EXIT_FAILED_CHECK)


@app.command()
@handles_errors
def models(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False):
    """The model zoo: names usable as SOURCE, parameter counts, default input shapes."""
    from polynl_models.registry import describe_models

    rows = describe_models()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.table import Table
    table = Table(title="polynl model zoo")
    for column in ("name", "parameters", "input (C, H, W)", "checkpoint", "description"):
        table.add_column(column, no_wrap=column != "description")
    for row in rows:
        table.add_row(row["name"], f"{row['parameters']:,}", "x".join(map(str, row["input_shape"])),
                      "shipped" if row["checkpoint"] else "-", row["description"])
    console.print(table)


@app.command()
@handles_errors
def demo(
    model: Annotated[Optional[str], typer.Option(help="zoo model with a shipped checkpoint")] = None,
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", "-o", help="artifacts folder")] = None,
    samples: Annotated[Optional[int], typer.Option(help="held-out samples (default: all)")] = None,
):
    """The main job: the shipped trained model exported, inspected and validated on held-out data."""
    from polynl_deploy import defaults
    from polynl_deploy.demo import render, run_demo
    from polynl_deploy.settings import DemoSettings

    settings = DemoSettings(model or defaults.DEMO_MODEL, output_dir or Path(defaults.DEMO_OUTPUT_DIR),
                            samples=samples)
    result = run_demo(settings, on_step=lambda message: console.print(f"[dim]- {message}"))
    render(result, console)
    if not result.passed:
        raise typer.Exit(EXIT_FAILED_CHECK)


def _register_subcommands() -> None:
    """Commands defined in sibling modules; each wrapped like the ones above."""
    from polynl_cli import bench, serve, surgeon, tensorrt

    app.command(help=tensorrt.build.__doc__)(handles_errors(tensorrt.build))
    app.command(help=tensorrt.run.__doc__)(handles_errors(tensorrt.run))
    app.command(help=bench.bench.__doc__)(handles_errors(bench.bench))
    app.command(help=serve.serve.__doc__)(handles_errors(serve.serve))
    app.command("triton-repo", help=serve.triton_repo.__doc__)(handles_errors(serve.triton_repo))
    wrapped = typer.Typer(name="surgeon", help=surgeon.surgeon_app.info.help, no_args_is_help=True)
    for command in surgeon.surgeon_app.registered_commands:  # copies: surgeon_app itself stays unwrapped
        command = copy.copy(command)
        command.callback = handles_errors(command.callback)
        wrapped.registered_commands.append(command)
    app.add_typer(wrapped, name="surgeon")


_register_subcommands()


def main() -> None:
    # SIGTERM (timeout, docker stop) unwinds like Ctrl-C, so no temporary output file is left behind.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    app(prog_name="polynl")


if __name__ == "__main__":
    sys.exit(main())
