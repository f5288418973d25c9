"""``polynl surgeon``: fuse Poly-NL subgraphs of an ONNX file into PolyNL nodes, or decompose them."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

surgeon_app = typer.Typer(name="surgeon", help="Rewrite ONNX files: fuse Poly-NL blocks into PolyNL nodes, "
                          "or decompose PolyNL nodes into standard ops.", no_args_is_help=True)
console = Console()

SrcArg = Annotated[Path, typer.Argument(help="ONNX file to read")]
DstOpt = Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write")]


@surgeon_app.command()
def fuse(src: SrcArg, output: DstOpt):
    """Replace each Poly-NL block of a plain torch.onnx export by one polynl::PolyNL node."""
    from polynl_deploy.surgeon import fuse_file

    fused = fuse_file(src, output)
    console.print(f"wrote [bold]{output}[/]: fused {fused} Poly-NL block(s)")
    if not fused:
        console.print("[yellow]no Poly-NL block found: the output is an unchanged copy. fuse matches what a plain "
                      "torch.onnx.export of PolyNL2d/PolyNLTokens produces; for a file exported with "
                      "`polynl export --mode standard-ops` or written by `polynl surgeon decompose`, export "
                      "again with the default --mode custom-op")


@surgeon_app.command()
def decompose(src: SrcArg, output: DstOpt):
    """Replace every polynl::PolyNL node by standard ONNX ops."""
    from polynl_deploy.surgeon import decompose_file

    replaced = decompose_file(src, output)
    console.print(f"wrote [bold]{output}[/]: decomposed {replaced} PolyNL node(s)")
