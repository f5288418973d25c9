"""Defaults in one place: opset, tolerances, shapes, seeds."""

OPSET = 20
"""Default ONNX opset of exported models (default domain)."""

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

BODY_TRIANGLE_GRAM_MIN_CHANNELS = 256
"""The folded maps body computes the Gram matrix from its upper block triangle (3/4 of the flops, plus
copies of X's two channel halves) from this many channels on, one full X X^T product below. Measured
on ONNX Runtime CPU (benchmarks/body_forms.py, three runs): 0.90x to 1.00x the full product's body
time at C = 256 to 1024, 0.96x to 0.99x at C = 128, 1.01x to 1.15x at C = 64."""

DEMO_MODEL = "polynl-marks-small"
"""The zoo model whose trained checkpoint ships with the toolkit; `polynl demo` runs on it."""

DEMO_OUTPUT_DIR = "polynl-out"
DEMO_BATCH = 250
LABEL_AGREEMENT_MIN = 0.999
"""Backends must predict the same label on at least this fraction of held-out samples."""
