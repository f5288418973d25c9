"""ONNX Runtime CPU: the exported body's forms against each other, by C and N.

1. Folded against unfolded. The body picks the form from the weights (unfolded where C' <= C/4 and
   for token blocks with C >= 256) and per call from N (unfolded where the folded form costs more
   flops). Each case exports one block (C' = C/2), swaps its function body for each form
   (``build_function(opset, layout, unfolded)``) and times both.
2. The folded maps body's Gram matrix from its upper block triangle in 2 and 4 channel blocks (the
   export's forms from C = 256 and C = 512 on) against one full X X^T product
   (``build_function(..., gram_blocks=...)``).

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
              (1, 256, 128 * 128), (8, 256, 64 * 64), (1, 512, 64 * 64), (1, 512, 128 * 128), (8, 512, 64 * 64),
              (1, 1024, 32 * 32), (1, 1024, 64 * 64)]
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
    print(f"\nfolded maps body, Gram matrix in 1, 2 or 4 channel blocks\n{'B':>2s} {'C':>5s} {'N':>6s} "
          f"{'full ms':>8s} {'2 blocks ms':>12s} {'4 blocks ms':>12s} {'2/full':>7s} {'4/full':>7s} {'4/2':>6s}")
    for batch, channels, positions in GRAM_CASES:
        proto, x = exported_block(contract.LAYOUT_MAPS, channels, positions, batch, scratch)
        times = time_bodies(proto, x, {blocks: build_function(defaults.OPSET, contract.LAYOUT_MAPS, False,
                                                              gram_blocks=blocks)
                                       for blocks in (1, 2, 4)}, options)
        print(f"{batch:2d} {channels:5d} {positions:6d} {times[1]:8.2f} {times[2]:12.2f} {times[4]:12.2f} "
              f"{times[2] / times[1]:7.2f} {times[4] / times[1]:7.2f} {times[4] / times[2]:6.2f}", flush=True)

if __name__ == "__main__":
    main()
