"""ONNX Runtime CPU: the exported body in the folded form against the unfolded form, by C and N.

The export picks the body form from C'/C alone (folded unless C' <= C/4). This script exports one
block (C' = C/2), swaps its function body for each form (``build_function(opset, layout, unfolded)``)
and times both in one process, so the ratio shows where the choice costs time.

    python benchmarks/body_forms.py        # about 2 minutes on 2 cores
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

CASES = [("tokens", 1024, 64), ("tokens", 1024, 256), ("tokens", 1024, 1024), ("tokens", 1024, 4096),
         ("tokens", 256, 256), ("tokens", 256, 4096), ("tokens", 256, 16384), ("tokens", 64, 4096),
         ("maps", 256, 64 * 64), ("maps", 256, 128 * 128), ("maps", 64, 128 * 128)]
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


def with_body(model: onnx.ModelProto, layout: str, unfolded: bool) -> bytes:
    swapped = onnx.ModelProto()
    swapped.CopyFrom(model)
    del swapped.functions[:]
    swapped.functions.append(build_function(defaults.OPSET, layout, unfolded))
    return swapped.SerializeToString()


def main() -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    scratch = Path(tempfile.mkdtemp(prefix="polynl-forms-")) / "block.onnx"
    print(f"{'layout':7s} {'C':>5s} {'N':>6s} {'folded ms':>10s} {'unfolded ms':>12s} {'unfolded/folded':>16s}")
    for layout, channels, positions in CASES:
        block = (PolyNL2d(channels) if layout == contract.LAYOUT_MAPS else PolyNLTokens(channels)).eval()
        side = int(positions ** 0.5)
        shape = (1, channels, side, side) if layout == contract.LAYOUT_MAPS else (1, positions, channels)
        x = torch.randn(*shape)
        export_onnx(block, x, scratch, mode="custom-op")
        proto = onnx.load(str(scratch))
        times = {form: median_ms(ort.InferenceSession(with_body(proto, layout, form == "unfolded"), options,
                                                      providers=["CPUExecutionProvider"]), x.numpy())
                 for form in ("folded", "unfolded")}
        print(f"{layout:7s} {channels:5d} {positions:6d} {times['folded']:10.2f} {times['unfolded']:12.2f} "
              f"{times['unfolded'] / times['folded']:16.2f}", flush=True)


if __name__ == "__main__":
    main()
