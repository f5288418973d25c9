"""``polynl serve`` and ``polynl triton-repo`` (registered in app.py).

The serving stack (fastapi, uvicorn, onnxruntime) is imported inside the commands only.
"""

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from polynl_deploy import defaults

console = Console()


def serve(
    models: Annotated[list[str], typer.Argument(
        help="model files (.onnx; .plan/.engine/.trt for TensorRT), each as PATH (served under its file stem) "
             "or NAME=PATH")],
    host: Annotated[str, typer.Option(help="address to bind; 0.0.0.0 exposes the server to the network")]
    = defaults.SERVE_HOST,
    port: Annotated[int, typer.Option(help="TCP port")] = defaults.SERVE_PORT,
    max_batch_size: Annotated[int, typer.Option(
        help="above 1: merge concurrent requests along axis 0 into batches of up to this many rows")] = defaults.SERVE_MAX_BATCH_SIZE,
    max_delay_ms: Annotated[float, typer.Option(help="how long a forming batch waits for more requests")] = defaults.SERVE_MAX_DELAY_MS,
    max_queue: Annotated[int, typer.Option(help="requests admitted per model; more are answered 503")] = defaults.SERVE_MAX_QUEUE,
    max_body_mb: Annotated[float, typer.Option(help="largest request body; larger ones are answered 413")] = defaults.SERVE_MAX_BODY_MB,
    backend: Annotated[str, typer.Option(
        help="auto (TensorRT for .plan/.engine/.trt, ONNX Runtime otherwise), onnxruntime, or tensorrt")] = "auto",
    workers: Annotated[int, typer.Option(help="inference threads")] = defaults.SERVE_WORKERS,
):
    """Serve models over the Open Inference Protocol (KServe v2) REST API, with /metrics."""
    from polynl_deploy.serving import ServeSettings, parse_model_args
    from polynl_deploy.serving import serve as run_server

    settings = ServeSettings(parse_model_args(models), host=host, port=port, backend=backend,
                             max_batch_size=max_batch_size, max_delay_ms=max_delay_ms, max_queue=max_queue,
                             max_body_mb=max_body_mb, workers=workers)
    run_server(settings, on_ready=lambda url: console.print(f"serving {', '.join(settings.models)} on {url}",
                                                            highlight=False))


def triton_repo(
    onnx_path: Annotated[Path, typer.Argument(help="exported ONNX file")],
    output: Annotated[Path, typer.Option("--output", "-o", help="model repository folder")],
    name: Annotated[Optional[str], typer.Option(help="model name (default: the ONNX file's stem)")] = None,
    plan: Annotated[Optional[Path], typer.Option(
        help="TensorRT engine built from the ONNX file: adds a tensorrt_plan model")] = None,
    max_batch_size: Annotated[Optional[int], typer.Option(
        help=f"Triton max_batch_size (0: no batching; default {defaults.TRITON_MAX_BATCH_SIZE}, for the plan at "
             "most its profile's max batch)")]
    = None,
    max_delay_us: Annotated[int, typer.Option(help="dynamic batching max_queue_delay_microseconds")
                            ] = defaults.TRITON_MAX_QUEUE_DELAY_US,
    instances: Annotated[int, typer.Option(help="model instances (instance_group count)")] = defaults.TRITON_INSTANCES,
    onnx_on_gpu: Annotated[bool, typer.Option("--onnx-on-gpu", help="run the ONNX model on GPU instances")]
    = False,
    force: Annotated[bool, typer.Option("--force", help="replace models of the same name")] = False,
):
    """Write a Triton Inference Server model repository (config.pbtxt, model files, README)."""
    from polynl_deploy.triton_repo import make_triton_repo

    written = make_triton_repo(output, onnx_path, name=name, plan_path=plan, max_batch_size=max_batch_size,
                               max_queue_delay_us=max_delay_us, instances=instances, onnx_on_gpu=onnx_on_gpu,
                               overwrite=force)
    for model in written.models:
        console.print(f"wrote [bold]{model.directory}[/] ({model.platform}, max_batch_size {model.max_batch_size})",
                      highlight=False)
    console.print(f"instructions: {written.readme}", highlight=False)
