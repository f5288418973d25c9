"""Defaults in one place: opset, tolerances, shapes, seeds."""

OPSET = 20
"""Default ONNX opset of exported models (default domain)."""

OPSET_MIN = 18
"""Lowest opset export accepts: torch.onnx's dynamo exporter implements ops from opset 18 on, and its
down-conversion below that fails or silently keeps 18. The highest is what the onnx package knows."""

EXAMPLE_MAX_ELEMENTS = 1 << 28
"""Largest example input export makes (elements; 1 GiB of float32): dynamic axes make a small example
enough, and a larger one would only exhaust memory while tracing."""

SEED = 0

# Per-dtype tolerances for validate: |a - b| <= atol + rtol * |b|.
TOLERANCES = {
    "float32": {"atol": 1e-5, "rtol": 1e-4},
    "float16": {"atol": 1e-2, "rtol": 1e-2},
    "bfloat16": {"atol": 5e-2, "rtol": 5e-2},
    "float64": {"atol": 1e-10, "rtol": 1e-9},
}

VALIDATION_SHAPE_SCALES = (1.0, 0.5, 1.5)
"""validate() runs the example shape and these rescalings of its dynamic axes."""

UNFOLDED_MAX_RATIO = 0.25
"""The unfolded form is used when C' <= UNFOLDED_MAX_RATIO * C (cheaper than the Gram form)."""

FOLDED_FLOPS_MARGIN = (5, 4)
"""Eager ``impl="auto"`` computes a call in the naive form once the folded form's flops exceed this
fraction (5/4) of the naive form's (which moves more intermediate data), i.e. at few positions."""

BODY_UNFOLDED_TOKENS_MIN_CHANNELS = 256
"""The exported function body also computes token blocks with at least this many channels in the
unfolded form. Measured on ONNX Runtime CPU (benchmarks/body_forms.py, C' = C/2): there it took
0.11x to 0.84x the folded body's time at C = 256 and 1024 (N = 64 to 16384), while the folded body
stayed faster for maps at N = 128^2 and at C = 64."""

BODY_GRAM_BLOCKS = ((512, 4), (256, 2))
"""(min channels, blocks), widest first: the folded maps body computes the Gram matrix from its upper
block triangle in this many channel blocks from this many channels on ((blocks + 1) / (2 blocks) of the
flops, plus a copy of X into its blocks), one full X X^T product below the last tier. Body times on
ONNX Runtime CPU (benchmarks/body_forms.py and interleaved reruns, N >= 1024, a host whose single runs
move by 10 to 40 %): 2 blocks against one full product 0.82x to 0.95x at C = 512 to 1024, 0.78x to
1.18x at C = 256 (0.90x to 1.00x in the three runs that set this tier), 0.92x to 0.99x at C = 128 and
0.85x to 1.15x at C = 64; 4 blocks against 2 blocks 0.91x to 1.06x (about 0.97x typical) at C = 512
to 1024, nothing consistent at C = 256."""

DEMO_MODEL = "polynl-marks-small"
"""The zoo model whose trained checkpoint ships with the toolkit; `polynl demo` runs on it."""

DEMO_OUTPUT_DIR = "polynl-out"
DEMO_BATCH = 250
LABEL_AGREEMENT_MIN = 0.999
"""Backends must predict the same label on at least this fraction of held-out samples."""

ENGINE_SUFFIXES = (".plan", ".engine", ".trt")
"""File suffixes taken for serialized TensorRT engines (by run, serve and their CLI commands)."""

# polynl serve (ServeSettings and the CLI read these).
SERVE_HOST = "127.0.0.1"
SERVE_PORT = 8000
SERVE_MAX_BATCH_SIZE = 1
SERVE_MAX_DELAY_MS = 2.0
SERVE_MAX_QUEUE = 64
SERVE_MAX_BODY_MB = 64.0
SERVE_WORKERS = 2

# polynl triton-repo (make_triton_repo and the CLI read these).
TRITON_MAX_BATCH_SIZE = 8
TRITON_MAX_QUEUE_DELAY_US = 100
TRITON_INSTANCES = 1
