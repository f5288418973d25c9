"""The model-local FunctionProto of polynl::PolyNL: the block in standard ONNX ops.

Any ONNX runtime executes a PolyNL node through this body; TensorRT with the plugin
loaded uses the plugin instead. The body branches (with If nodes whose conditions are
constants once the weights are known, so runtimes fold them away) on the layout and on
the cheaper form for the block (``nn.functional.body_prefers_unfolded``): the exact Gram
("folded") form, or the unfolded form when C' <= C/4 and for token blocks with many channels.
The folded maps form of wide blocks computes only the upper block triangle of the symmetric Gram
matrix (``nn.functional.body_prefers_triangle_gram``).
Statistics are accumulated in float32 whatever the input type.
"""

import onnx
from onnx import TensorProto, helper

from polynl_deploy import contract
from polynl_deploy.defaults import (BODY_TRIANGLE_GRAM_MIN_CHANNELS, BODY_UNFOLDED_TOKENS_MIN_CHANNELS,
                                    UNFOLDED_MAX_RATIO)

FLOAT = TensorProto.FLOAT


class _Block:
    """Accumulates nodes with unique value names; one per graph or branch."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        return self.multi_op(op_type, 1, *inputs, **attrs)[0]

    def multi_op(self, op_type: str, count: int, *inputs: str, **attrs) -> list[str]:
        self._count += 1
        outs = [f"{self.prefix}{op_type.lower()}_{self._count}" + (f"_{i}" if i else "") for i in range(count)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs

    def const(self, value, dtype=TensorProto.INT64) -> str:
        values = value if isinstance(value, (list, tuple)) else [value]
        tensor = helper.make_tensor(f"{self.prefix}c{self._count + 1}", dtype, [len(values)], values)
        return self.op("Constant", value=tensor)

    def branch(self, prefix: str, build) -> "_Block":
        """A new block for an If branch; ``build(block)`` fills it and returns its output names."""
        child = _Block(prefix)
        child.outputs = build(child)
        return child

    def graph(self, name: str) -> onnx.GraphProto:
        # Branch outputs take the type of their producer; rank and dtype vary with the call site.
        return helper.make_graph(self.nodes, name, [], [onnx.ValueInfoProto(name=o) for o in self.outputs])


def _attribute_constant(block: _Block, attr: str) -> str:
    """Constant node whose value is the calling node's float attribute ``attr``."""
    out = f"{block.prefix}{attr}"
    node = helper.make_node("Constant", [], [out])
    node.attribute.append(onnx.AttributeProto(name="value_float", ref_attr_name=attr,
                                              type=onnx.AttributeProto.FLOAT))
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


def _triangle_gram_sum_maps(b: _Block, x32: str, channels: str) -> str:
    """X X^T (B,C,C) of X (B,C,N) from its upper block triangle: 3/4 of the full product's flops.

    With X = [X0; X1] split at h0 = C - C//2: the top rows X0 X^T and the corner X1 X1^T are
    computed, the bottom-left block is the transpose of the top-right one.
    """
    h0 = b.op("Sub", channels, b.op("Div", channels, b.const(2)))
    axis_c, axis_c2 = b.const(1), b.const(2)
    top_x = b.op("Slice", x32, b.const(0), h0, axis_c)
    bottom_x = b.op("Slice", x32, h0, channels, axis_c)
    top = b.op("MatMul", top_x, b.op("Transpose", x32, perm=[0, 2, 1]))
    corner = b.op("MatMul", bottom_x, b.op("Transpose", bottom_x, perm=[0, 2, 1]))
    top_right = b.op("Slice", top, h0, channels, axis_c2)
    bottom = b.op("Concat", b.op("Transpose", top_right, perm=[0, 2, 1]), corner, axis=2)
    return b.op("Concat", top, bottom, axis=1)


def _folded_maps(b: _Block, w, x32, xr, alpha, eye, restore, gram_sum) -> tuple[str, str]:
    n = b.op("Cast", b.op("Shape", x32, start=2, end=3), to=FLOAT)
    gram = b.op("Div", gram_sum, n)
    mean = b.op("ReduceMean", x32, b.const(2), keepdims=0)
    mixing, shift = _mixing(b, gram, mean, w, alpha, eye)
    mixing_t = b.op("CastLike", b.op("Transpose", mixing, perm=[0, 2, 1]), xr)
    return restore(b.op("MatMul", mixing_t, xr)), b.op("CastLike", b.op("Unsqueeze", shift, b.const([2, 3])), xr)


def _unfolded_maps(b: _Block, w, x32, xr, alpha, xr_dtype_alpha, restore) -> tuple[str, str]:

    def linear(weight: str, source: str) -> str:
        return b.op("MatMul", b.op("Transpose", weight, perm=[1, 0]), source)

    def project(weight: str, bias: str, source: str) -> str:
        return b.op("Add", linear(weight, source), b.op("Unsqueeze", bias, b.const(1)))

    keys, values = project(w["Wk"], w["bk"], x32), project(w["Wv"], w["bv"], x32)
    m = b.op("ReduceMean", b.op("Mul", keys, values), b.const(2), keepdims=1)
    wq, bq = b.op("CastLike", w["Wq"], xr), b.op("CastLike", w["bq"], xr)
    wo, bo = b.op("CastLike", w["Wo"], xr), b.op("CastLike", w["bo"], xr)
    z = b.op("Mul", project(wq, bq, xr), b.op("CastLike", m, xr))
    main = b.op("Add", b.op("Mul", xr_dtype_alpha, xr), linear(wo, z))
    return restore(main), b.op("Unsqueeze", bo, b.const([0, 2, 3]))


def _folded_tokens(b: _Block, w, x32, x, alpha, eye, restore) -> tuple[str, str]:
    gram_sum = b.op("MatMul", b.op("Transpose", x32, perm=[0, 2, 1]), x32)
    n = b.op("Cast", b.op("Shape", x32, start=1, end=2), to=FLOAT)
    gram = b.op("Div", gram_sum, n)
    mean = b.op("ReduceMean", x32, b.const(1), keepdims=0)
    mixing, shift = _mixing(b, gram, mean, w, alpha, eye)
    return (restore(b.op("MatMul", x, b.op("CastLike", mixing, x))),
            b.op("CastLike", b.op("Unsqueeze", shift, b.const(1)), x))


def _unfolded_tokens(b: _Block, w, x32, x, alpha, x_dtype_alpha, restore) -> tuple[str, str]:
    keys = b.op("Add", b.op("MatMul", x32, w["Wk"]), w["bk"])
    values = b.op("Add", b.op("MatMul", x32, w["Wv"]), w["bv"])
    m = b.op("ReduceMean", b.op("Mul", keys, values), b.const(1), keepdims=1)
    query = b.op("Add", b.op("MatMul", x, b.op("CastLike", w["Wq"], x)), b.op("CastLike", w["bq"], x))
    z = b.op("Mul", query, b.op("CastLike", m, x))
    main = b.op("Add", b.op("Mul", x_dtype_alpha, x), b.op("MatMul", z, b.op("CastLike", w["Wo"], x)))
    return restore(main), b.op("CastLike", w["bo"], x)


def _body(top: _Block, layout: str | None, unfolded: bool | None,
          triangle_gram: bool | None) -> tuple[str, str]:
    """Nodes of the block into ``top``; None for a choice means: decide at run time with If.

    Returns the output without its bias, already in the shape of X, and the bias (``shift``) that
    broadcasts against it: the caller's final Add then writes Y directly. Ending on the Reshape
    instead would cost ONNX Runtime a copy of Y wherever the block's output is a graph output.
    """
    w = {name: top.op("Cast", name, to=FLOAT) for name in contract.INPUT_NAMES[1:]}
    x = contract.INPUT_NAMES[0]
    alpha = _attribute_constant(top, "alpha")
    channels = top.op("Shape", "Wq", start=0, end=1)
    eye = top.op("EyeLike", top.op("ConstantOfShape", top.op("Concat", channels, channels, axis=0),
                                   value=helper.make_tensor("zero", FLOAT, [1], [0.0])))
    x_alpha = top.op("CastLike", alpha, x)
    if unfolded is None:
        inner = top.op("Shape", "Wq", start=1, end=2)
        ratio = round(1 / UNFOLDED_MAX_RATIO)
        by_ratio = top.op("LessOrEqual", top.op("Mul", inner, top.const(ratio)), channels)
        wide = top.op("GreaterOrEqual", channels, top.const(BODY_UNFOLDED_TOKENS_MIN_CHANNELS))
        unfolded_for = {contract.LAYOUT_MAPS: by_ratio, contract.LAYOUT_TOKENS: top.op("Or", by_ratio, wide)}

    def choose(b: _Block, block_layout: str, unfolded_form, folded_form) -> tuple[str, str]:
        if unfolded is not None:
            return unfolded_form(b) if unfolded else folded_form(b)
        prefix = block_layout[0]
        then_b, else_b = b.branch(prefix + "u_", unfolded_form), b.branch(prefix + "f_", folded_form)
        return tuple(b.multi_op("If", 2, unfolded_for[block_layout], then_branch=then_b.graph("unfolded"),
                                else_branch=else_b.graph("folded")))

    # Both layouts reshape X with C taken from the weights, so each branch is shape-consistent for any
    # input: runtimes check the shapes of an If's untaken branch too (static H, W or N included).
    batch = top.op("Shape", x, start=0, end=1)

    def restorer(b: _Block):
        return lambda value: b.op("Reshape", value, b.op("Shape", x))

    def gram_sum(b: _Block, xr32: str) -> str:
        def triangle(c: _Block) -> list[str]:
            return [_triangle_gram_sum_maps(c, xr32, channels)]

        def full(c: _Block) -> list[str]:
            return [c.op("MatMul", xr32, c.op("Transpose", xr32, perm=[0, 2, 1]))]

        if triangle_gram is not None:
            return (triangle if triangle_gram else full)(b)[0]
        wide = b.op("GreaterOrEqual", channels, b.const(BODY_TRIANGLE_GRAM_MIN_CHANNELS))
        return b.op("If", wide, then_branch=b.branch("gt_", triangle).graph("triangle"),
                    else_branch=b.branch("gf_", full).graph("full"))

    def maps(b: _Block) -> tuple[str, str]:
        # flatten (B, C, H, W) to (B, C, N) and back
        xr = b.op("Reshape", x, b.op("Concat", batch, channels, b.const(-1), axis=0))
        xr32 = b.op("Cast", xr, to=FLOAT)
        return choose(b, contract.LAYOUT_MAPS,
                      lambda c: _unfolded_maps(c, w, xr32, xr, alpha, x_alpha, restorer(c)),
                      lambda c: _folded_maps(c, w, xr32, xr, alpha, eye, restorer(c), gram_sum(c, xr32)))

    def tokens(b: _Block) -> tuple[str, str]:
        xt = b.op("Reshape", x, b.op("Concat", batch, b.const(-1), channels, axis=0))
        x32 = b.op("Cast", xt, to=FLOAT)
        return choose(b, contract.LAYOUT_TOKENS,
                      lambda c: _unfolded_tokens(c, w, x32, xt, alpha, x_alpha, restorer(c)),
                      lambda c: _folded_tokens(c, w, x32, xt, alpha, eye, restorer(c)))

    if layout is not None:
        return maps(top) if layout == contract.LAYOUT_MAPS else tokens(top)
    # The layout follows from the rank of X (4: maps, 3: tokens). Shape(Shape(X)) is known before
    # run time even with dynamic dims, so runtimes fold the If; TensorRT's parser cannot read
    # string constants, which comparing the `layout` attribute would need.
    rank = top.op("Shape", top.op("Shape", x))
    is_maps = top.op("Equal", rank, top.const(4))
    maps_b, tokens_b = top.branch("maps_", maps), top.branch("tokens_", tokens)
    return tuple(top.multi_op("If", 2, is_maps, then_branch=maps_b.graph("maps"),
                              else_branch=tokens_b.graph("tokens")))


def build_function(opset: int, layout: str | None = None, unfolded: bool | None = None,
                   name: str = contract.OP_TYPE, domain: str = contract.DOMAIN,
                   triangle_gram: bool | None = None) -> onnx.FunctionProto:
    """FunctionProto polynl::PolyNL(X, Wq, bq, Wk, bk, Wv, bv, Wo, bo) -> Y with attributes alpha, layout.

    Without ``layout``/``unfolded``/``triangle_gram`` the body serves every block (If nodes decide);
    with them it is specialized for one block and holds no If (used to inline blocks into standard
    ops, and by ``benchmarks/body_forms.py`` to time each form).
    """
    top = _Block("")
    main, shift = _body(top, layout, unfolded, triangle_gram)
    top.nodes.append(helper.make_node("Add", [main, shift], [contract.OUTPUT_NAMES[0]]))
    return helper.make_function(
        domain, name, list(contract.INPUT_NAMES), list(contract.OUTPUT_NAMES),
        top.nodes, [helper.make_opsetid("", opset)],
        attributes=["alpha", "layout"],
        doc_string=__doc__.split("\n\n")[0],
    )
