"""The PolyNL custom-op contract, defined once.

The ONNX exporter, the OpSchema, the model-local function body, the graph-surgery
passes and the TensorRT plugin (plugins/, checked by tests) all read this module.
"""

from dataclasses import dataclass

OP_TYPE = "PolyNL"
DOMAIN = "polynl"
OP_VERSION = 1
PLUGIN_NAMESPACE = "polynl"
PLUGIN_VERSION = "1"

LAYOUT_MAPS = "maps"
"""X is (B, C, H, W): N = H * W positions, channels first."""
LAYOUT_TOKENS = "tokens"
"""X is (B, N, C): N tokens, channels last."""
LAYOUTS = (LAYOUT_MAPS, LAYOUT_TOKENS)


@dataclass(frozen=True)
class Input:
    name: str
    shape: str
    doc: str


INPUTS = (
    Input("X", "(B, C, H, W) or (B, N, C)", "input features"),
    Input("Wq", "(C, C')", "query projection, Q = X Wq + bq"),
    Input("bq", "(C',)", "query bias"),
    Input("Wk", "(C, C')", "key projection"),
    Input("bk", "(C',)", "key bias"),
    Input("Wv", "(C, C')", "value projection"),
    Input("bv", "(C',)", "value bias"),
    Input("Wo", "(C', C)", "output projection with beta and the norm folded in"),
    Input("bo", "(C,)", "output bias with beta and the norm folded in"),
)
INPUT_NAMES = tuple(i.name for i in INPUTS)
OUTPUT_NAMES = ("Y",)


@dataclass(frozen=True)
class Attribute:
    name: str
    type: str  # "float" or "string"
    default: object
    doc: str


ATTRIBUTES = (
    Attribute("alpha", "float", 1.0, "residual scale: Y = alpha * X + (Q * m) Wo + bo"),
    Attribute("layout", "string", LAYOUT_MAPS, "'maps' for (B, C, H, W), 'tokens' for (B, N, C)"),
    Attribute("plugin_namespace", "string", PLUGIN_NAMESPACE, "TensorRT plugin namespace"),
    Attribute("plugin_version", "string", PLUGIN_VERSION, "TensorRT plugin version"),
)
ATTRIBUTE_NAMES = tuple(a.name for a in ATTRIBUTES)


def is_polynl_node(node) -> bool:
    """Whether an ONNX NodeProto is a polynl::PolyNL node."""
    return node.domain == DOMAIN and node.op_type == OP_TYPE
