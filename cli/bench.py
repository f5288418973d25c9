"""``polynl bench``: the benchmark sweep (registered in app.py)."""

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console


def bench(
    quick: Annotated[bool, typer.Option("--quick", help="small grid, a couple of minutes on 2 cores (default)")
                     ] = False,
    targets: Annotated[bool, typer.Option("--targets", help="C=256, C'=128, batch 1, N up to 128²: the targets")
                       ] = False,
    full: Annotated[bool, typer.Option("--full", help="N 32²..256² and tokens, C 64..1024, batch 1 and 8, all zoo "
                                                     "models (hours on a small CPU)")] = False,
    gpu: Annotated[bool, typer.Option("--gpu", help="float16 on CUDA: N 64²..256², C 64..512, batch 1 and 8, with "
                                                   "the fused kernel and the bandwidth floor; GPU targets")] = False,
    dtype: Annotated[Optional[str], typer.Option(help="X and module type on CUDA: float32, float16, bfloat16 "
                                                      "(with --gpu; default float16)")] = None,
    output_dir: Annotated[Path, typer.Option(help="where CSV, JSON and plots go")] = Path("benchmarks/results"),
    repeats: Annotated[Optional[int], typer.Option(help="timed calls per measurement (preset default)")] = None,
    warmup: Annotated[Optional[int], typer.Option(help="untimed calls before timing (preset default)")] = None,
    rounds: Annotated[Optional[int], typer.Option(help="times each case's contenders are timed in turn; fits and "
                                                       "targets use each one's best round (preset default)")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch and ONNX Runtime intra-op threads "
                                                        "(default: torch.get_num_threads())")] = None,
    contender: Annotated[Optional[list[str]], typer.Option(help="run only these contenders (repeat the option)")
                         ] = None,
    nonlocal_memory_cap_gib: Annotated[Optional[float], typer.Option(
        help="skip NonLocal2d where its B x N x N matrix exceeds this (GiB)")] = None,
    models: Annotated[bool, typer.Option(help="also time the zoo models end to end")] = True,
    model: Annotated[Optional[list[str]], typer.Option(
        help="time these zoo models end to end instead of the preset's (repeat the option)")] = None,
    layers: Annotated[bool, typer.Option(help="run the layer sweep (--no-layers: zoo models only)")] = True,
    plots: Annotated[bool, typer.Option(help="write PNG plots")] = True,
):
    """Benchmark Poly-NL layers (eager, compiled, ONNX Runtime; on CUDA the fused kernel) against NonLocal2d
    and the floors (two GEMMs; on CUDA also memory bandwidth)."""
    from polynl_deploy.bench import BenchSettings, run_bench
    from polynl_deploy.bench.report import render

    chosen = [name for name, flag in (("quick", quick), ("targets", targets), ("full", full), ("gpu", gpu)) if flag]
    if len(chosen) > 1:
        raise typer.BadParameter(f"choose one of --quick, --targets, --full, --gpu (got {', '.join(chosen)})")
    overrides = {"output_dir": output_dir, "plots": plots}
    optional = {"repeats": repeats, "warmup": warmup, "rounds": rounds, "threads": threads,
                "nonlocal_memory_cap_gib": nonlocal_memory_cap_gib,
                "contenders": tuple(contender) if contender else None, "dtype": dtype}
    overrides.update({k: v for k, v in optional.items() if v is not None})
    if model:
        overrides["models"] = tuple(model)
    if not models:
        overrides["models"] = ()
    if not layers:
        overrides.update(map_sides=(), token_lengths=(), target=None)
    settings = BenchSettings.preset_named(chosen[0] if chosen else "quick", **overrides)
    render(run_bench(settings), Console())
