"""The model-local FunctionProto of polynl::PolyNL: the block in standard ONNX ops.

Any ONNX runtime executes a PolyNL node through this body; TensorRT with the plugin
loaded uses the plugin instead. The body branches (with If nodes whose conditions are
constants once the weights are known, so runtimes fold them away) on the layout and on
the cheaper form for the block's C'/C: the exact Gram ("folded") form, or the unfolded
form when C' <= C/4. Statistics are accumulated in float32 whatever the input type.
"""

import onnx
from onnx import TensorProto, helper

from polynl_deploy import contract
from polynl_deploy.defaults import UNFOLDED_MAX_RATIO

FLOAT = TensorProto.FLOAT


class _Block:
    """Accumulates nodes with unique value names; one per graph or branch."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        self._count += 1
        out = f"{self.prefix}{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def const(self, value, dtype=TensorProto.INT64) -> str:
        values = value if isinstance(value, (list, tuple)) else [value]
        tensor = helper.make_tensor(f"{self.prefix}c{self._count + 1}", dtype, [len(values)], values)
        return self.op("Constant", value=tensor)

    def graph(self, name: str, output: str) -> onnx.GraphProto:
        # Branch outputs take the type of their producer; rank and dtype vary with the call site.
        return helper.make_graph(self.nodes, name, [], [onnx.ValueInfoProto(name=output)])


def _attribute_constant(block: _Block, attr: str, kind: str) -> str:
    """Constant node whose value is the calling node's attribute ``attr`` (value_float/value_string)."""
    out = f"{block.prefix}{attr}"
    node = helper.make_node("Constant", [], [out])
    node.attribute.append(onnx.AttributeProto(
        name=f"value_{kind}", ref_attr_name=attr,
        type=onnx.AttributeProto.FLOAT if kind == "float" else onnx.AttributeProto.STRING))
    block.nodes.append(node)
    return out


def _mixing(b: _Block, gram: str, mean: str, w: dict[str, str], alpha: str, eye: str) -> tuple[str, str]:
    """From S (B,C,C) and mu (B,C): M = alpha I + Wq diag(m) Wo (B,C,C) and c = (bq*m) Wo + bo (B,C)."""
    quadratic = b.op("ReduceSum", b.op("Mul", w["Wk"], b.op("MatMul", gram, w["Wv"])), b.const(1), keepdims=0)
    m = b.op("Add", b.op("Add", quadratic, b.op("Mul", w["bk"], b.op("MatMul", mean, w["Wv"]))),
             b.op("Add", b.op("Mul", w["bv"], b.op("MatMul", mean, w["Wk"])), b.op("Mul", w["bk"], w["bv"])))
    low_rank = b.op("MatMul", b.op("Mul", w["Wq"], b.op("Unsqueeze", m, b.const(1))), w["Wo"])
    mixing = b.op("Add", low_rank, b.op("Mul", alpha, eye))
    shift = b.op("Add", b.op("MatMul", b.op("Mul", w["bq"], m), w["Wo"]), w["bo"])
    return mixing, shift


def _folded_maps(w, x32, xr, alpha, eye) -> onnx.GraphProto:
    b = _Block("fm_")
    gram_sum = b.op("MatMul", x32, b.op("Transpose", x32, perm=[0, 2, 1]))
    n = b.op("Cast", b.op("Shape", x32, start=2, end=3), to=FLOAT)
    gram = b.op("Div", gram_sum, n)
    mean = b.op("ReduceMean", x32, b.const(2), keepdims=0)
    mixing, shift = _mixing(b, gram, mean, w, alpha, eye)
    mixing_t = b.op("CastLike", b.op("Transpose", mixing, perm=[0, 2, 1]), xr)
    out = b.op("Add", b.op("MatMul", mixing_t, xr), b.op("CastLike", b.op("Unsqueeze", shift, b.const(2)), xr))
    return b.graph("folded_maps", out)


def _unfolded_maps(w, x32, xr, alpha, xr_dtype_alpha) -> onnx.GraphProto:
    b = _Block("um_")

    def project(weight: str, bias: str, source: str) -> str:
        return b.op("Add", b.op("MatMul", b.op("Transpose", weight, perm=[1, 0]), source),
                    b.op("Unsqueeze", bias, b.const(1)))

    keys, values = project(w["Wk"], w["bk"], x32), project(w["Wv"], w["bv"], x32)
    m = b.op("ReduceMean", b.op("Mul", keys, values), b.const(2), keepdims=1)
    wq, bq = b.op("CastLike", w["Wq"], xr), b.op("CastLike", w["bq"], xr)
    wo, bo = b.op("CastLike", w["Wo"], xr), b.op("CastLike", w["bo"], xr)
    z = b.op("Mul", project(wq, bq, xr), b.op("CastLike", m, xr))
    projected = project(wo, bo, z)
    out = b.op("Add", b.op("Mul", xr_dtype_alpha, xr), projected)
    return b.graph("unfolded_maps", out)


def _folded_tokens(w, x32, x, alpha, eye) -> onnx.GraphProto:
    b = _Block("ft_")
    gram_sum = b.op("MatMul", b.op("Transpose", x32, perm=[0, 2, 1]), x32)
    n = b.op("Cast", b.op("Shape", x32, start=1, end=2), to=FLOAT)
    gram = b.op("Div", gram_sum, n)
    mean = b.op("ReduceMean", x32, b.const(1), keepdims=0)
    mixing, shift = _mixing(b, gram, mean, w, alpha, eye)
    out = b.op("Add", b.op("MatMul", x, b.op("CastLike", mixing, x)),
               b.op("CastLike", b.op("Unsqueeze", shift, b.const(1)), x))
    return b.graph("folded_tokens", out)


def _unfolded_tokens(w, x32, x, alpha, x_dtype_alpha) -> onnx.GraphProto:
    b = _Block("ut_")
    keys = b.op("Add", b.op("MatMul", x32, w["Wk"]), w["bk"])
    values = b.op("Add", b.op("MatMul", x32, w["Wv"]), w["bv"])
    m = b.op("ReduceMean", b.op("Mul", keys, values), b.const(1), keepdims=1)
    query = b.op("Add", b.op("MatMul", x, b.op("CastLike", w["Wq"], x)), b.op("CastLike", w["bq"], x))
    z = b.op("Mul", query, b.op("CastLike", m, x))
    projected = b.op("Add", b.op("MatMul", z, b.op("CastLike", w["Wo"], x)), b.op("CastLike", w["bo"], x))
    out = b.op("Add", b.op("Mul", x_dtype_alpha, x), projected)
    return b.graph("unfolded_tokens", out)


def build_function(opset: int) -> onnx.FunctionProto:
    """FunctionProto polynl::PolyNL(X, Wq, bq, Wk, bk, Wv, bv, Wo, bo) -> Y with attributes alpha, layout."""
    top = _Block("")
    w = {name: top.op("Cast", name, to=FLOAT) for name in contract.INPUT_NAMES[1:]}
    x = contract.INPUT_NAMES[0]
    alpha = _attribute_constant(top, "alpha", "float")
    layout = _attribute_constant(top, "layout", "string")
    is_maps = top.op("Equal", layout, top.op("Constant", value_string=contract.LAYOUT_MAPS))
    channels = top.op("Shape", "Wq", start=0, end=1)
    inner = top.op("Shape", "Wq", start=1, end=2)
    ratio = round(1 / UNFOLDED_MAX_RATIO)
    use_unfolded = top.op("LessOrEqual", top.op("Mul", inner, top.const(ratio)), channels)
    eye = top.op("EyeLike", top.op("ConstantOfShape", top.op("Concat", channels, channels, axis=0),
                                   value=helper.make_tensor("zero", FLOAT, [1], [0.0])))
    x_alpha = top.op("CastLike", alpha, x)

    # maps: flatten (B, C, H, W) to (B, C, N) and back; tokens use X as it is.
    maps = _Block("maps_")
    flat_shape = maps.op("Concat", maps.op("Shape", x, start=0, end=2), maps.const(-1), axis=0)
    xr = maps.op("Reshape", x, flat_shape)
    xr32 = maps.op("Cast", xr, to=FLOAT)
    maps_flat = maps.op("If", use_unfolded,
                        then_branch=_unfolded_maps(w, xr32, xr, alpha, x_alpha),
                        else_branch=_folded_maps(w, xr32, xr, alpha, eye))
    maps_out = maps.op("Reshape", maps_flat, maps.op("Shape", x))

    tokens = _Block("tokens_")
    x32 = tokens.op("Cast", x, to=FLOAT)
    tokens_out = tokens.op("If", use_unfolded,
                           then_branch=_unfolded_tokens(w, x32, x, alpha, x_alpha),
                           else_branch=_folded_tokens(w, x32, x, alpha, eye))

    top.nodes.append(helper.make_node(
        "If", [is_maps], [contract.OUTPUT_NAMES[0]],
        then_branch=maps.graph("maps", maps_out), else_branch=tokens.graph("tokens", tokens_out)))
    return helper.make_function(
        contract.DOMAIN, contract.OP_TYPE, list(contract.INPUT_NAMES), list(contract.OUTPUT_NAMES),
        top.nodes, [helper.make_opsetid("", opset)],
        attributes=["alpha", "layout"],
        doc_string=__doc__.split("\n\n")[0],
    )
