"""ONNX Runtime CPU: the exported body's forms against each other, by C and N.

1. Folded against unfolded. The export picks the body form per block, not per call (unfolded
   where C' <= C/4 and for token blocks with C >= 256). Each case exports one block (C' = C/2),
   swaps its function body for each form (``build_function(opset, layout, unfolded)``) and times both.
2. The folded maps body's Gram matrix from its upper block triangle (the export's form from
   C = 256 on) against one full X X^T product (``build_function(..., triangle_gram=...)``).

Same process, same thread count (2), so each ratio shows what the choice costs or saves.

    python benchmarks/body_forms.py        # about 3 minutes on 2 cores
"""

import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from polynl_deploy import contract, defaults
from polynl_deploy.export.exporter import export_onnx
from polynl_deploy.export.function_body import build_function
from polynl_deploy.nn import PolyNL2d, PolyNLTokens

FORM_CASES = [("tokens", 1024, 64), ("tokens", 1024, 256), ("tokens", 1024, 1024), ("tokens", 1024, 4096),
              ("tokens", 256, 256), ("tokens", 256, 4096), ("tokens", 256, 16384), ("tokens", 64, 4096),
              ("maps", 256, 64 * 64), ("maps", 256, 128 * 128), ("maps", 64, 128 * 128)]
GRAM_CASES = [(1, 64, 32 * 32), (1, 64, 128 * 128), (1, 128, 128 * 128), (1, 256, 32 * 32), (1, 256, 64 * 64),
              (1, 256, 128 * 128), (8, 256, 64 * 64), (1, 512, 128 * 128), (1, 1024, 64 * 64)]
REPEATS = 15


def median_ms(session: ort.InferenceSession, x: np.ndarray) -> float:
    feed = {session.get_inputs()[0].name: x}
    for _ in range(3):
        session.run(None, feed)
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1e3


def with_body(model: onnx.ModelProto, function: onnx.FunctionProto) -> bytes:
    swapped = onnx.ModelProto()
    swapped.CopyFrom(model)
    del swapped.functions[:]
    swapped.functions.append(function)
    return swapped.SerializeToString()


def exported_block(layout: str, channels: int, positions: int, batch: int,
                   path: Path) -> tuple[onnx.ModelProto, np.ndarray]:
    """One block with C' = C/2 exported as custom-op, and an input of the case's size."""
    block = (PolyNL2d(channels) if layout == contract.LAYOUT_MAPS else PolyNLTokens(channels)).eval()
    side = int(positions ** 0.5)
    shape = (batch, channels, side, side) if layout == contract.LAYOUT_MAPS else (batch, positions, channels)
    x = torch.randn(*shape)
    export_onnx(block, x, path, mode="custom-op")
    return onnx.load(str(path)), x.numpy()


def time_bodies(proto: onnx.ModelProto, x: np.ndarray, bodies: dict[str, onnx.FunctionProto],
                options: ort.SessionOptions) -> dict[str, float]:
    return {name: median_ms(ort.InferenceSession(with_body(proto, body), options,
                                                 providers=["CPUExecutionProvider"]), x)
            for name, body in bodies.items()}


def main() -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    scratch = Path(tempfile.mkdtemp(prefix="polynl-forms-")) / "block.onnx"
    print(f"{'layout':7s} {'C':>5s} {'N':>6s} {'folded ms':>10s} {'unfolded ms':>12s} {'unfolded/folded':>16s}")
    for layout, channels, positions in FORM_CASES:
        proto, x = exported_block(layout, channels, positions, 1, scratch)
        times = time_bodies(proto, x, {form: build_function(defaults.OPSET, layout, form == "unfolded")
                                       for form in ("folded", "unfolded")}, options)
        print(f"{layout:7s} {channels:5d} {positions:6d} {times['folded']:10.2f} {times['unfolded']:12.2f} "
              f"{times['unfolded'] / times['folded']:16.2f}", flush=True)
    print(f"\nfolded maps body, Gram matrix\n{'B':>2s} {'C':>5s} {'N':>6s} {'full ms':>8s} {'triangle ms':>12s} "
          f"{'triangle/full':>14s}")
    for batch, channels, positions in GRAM_CASES:
        proto, x = exported_block(contract.LAYOUT_MAPS, channels, positions, batch, scratch)
        times = time_bodies(proto, x, {gram: build_function(defaults.OPSET, contract.LAYOUT_MAPS, False,
                                                            triangle_gram=gram == "triangle")
                                       for gram in ("full", "triangle")}, options)
        print(f"{batch:2d} {channels:5d} {positions:6d} {times['full']:8.2f} {times['triangle']:12.2f} "
              f"{times['triangle'] / times['full']:14.2f}", flush=True)


if __name__ == "__main__":
    main()
