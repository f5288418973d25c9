"""The model-local FunctionProto of polynl::PolyNL: the block in standard ONNX ops.

Any ONNX runtime executes a PolyNL node through this body; TensorRT with the plugin
loaded uses the plugin instead. The body branches with If nodes on the layout (from X's rank)
and on the form (``nn.functional.body_prefers_unfolded``): the exact Gram ("folded") form, or
the unfolded form when C' <= C/4, for token blocks with many channels, and, per call as in eager
``impl="auto"``, at few positions. Runtimes fold an If whose condition is constant (the
layout, the form where N is static); the form's If stays at run time where N is dynamic.
The folded maps form of wide blocks computes only the upper block triangle of the symmetric Gram
matrix, in more channel blocks the wider the block (``nn.functional.body_gram_blocks``).
Statistics are accumulated in float32 whatever the input type.
"""

import onnx
from onnx import TensorProto, helper

from polynl_deploy import contract
from polynl_deploy.defaults import (BODY_GRAM_BLOCKS, BODY_UNFOLDED_TOKENS_MIN_CHANNELS, FOLDED_FLOPS_MARGIN,
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


def _block_triangle_gram_sum_maps(b: _Block, x32: str, channels: str, blocks: int) -> str:
    """X X^T (B,C,C) of X (B,C,N) from its upper block triangle, X split into ``blocks`` channel blocks.

    The first block X0 is C - (blocks-1) * (C // blocks) channels, the others C // blocks. The top
    rows X0 X^T are one product; below them only the blocks on and right of the diagonal,
    Xi Xj^T (j >= i), are computed and the rest are transposes: (blocks + 1) / (2 blocks) of the
    full product's flops (3/4 for 2 blocks, 5/8 for 4), plus one copy of X into its blocks.
    """
    axis_c2 = b.const(2)
    rest = b.op("Div", channels, b.const(blocks))
    first = b.op("Sub", channels, b.op("Mul", rest, b.const(blocks - 1)))
    x_blocks = b.multi_op("Split", blocks, x32, b.op("Concat", first, *[rest] * (blocks - 1), axis=0), axis=1)
    offsets = [first]
    for _ in range(blocks - 2):
        offsets.append(b.op("Add", offsets[-1], rest))
    offsets.append(channels)

    def times_transposed(left: str, right: str) -> str:
        return b.op("MatMul", left, b.op("Transpose", right, perm=[0, 2, 1]))

    top = times_transposed(x_blocks[0], x32)
    pairs = {(0, j): b.op("Slice", top, offsets[j - 1], offsets[j], axis_c2) for j in range(1, blocks)}
    rows = [top]
    for i in range(1, blocks):
        pairs.update({(i, j): times_transposed(x_blocks[i], x_blocks[j]) for j in range(i, blocks)})
        mirrored = [b.op("Transpose", pairs[j, i], perm=[0, 2, 1]) for j in range(i)]
        rows.append(b.op("Concat", *mirrored, *[pairs[i, j] for j in range(i, blocks)], axis=2))
    return b.op("Concat", *rows, axis=1)


def _folded_maps(b: _Block, w, x32, xr, alpha, eye, gram_sum) -> tuple[str, str]:
    n = b.op("Cast", b.op("Shape", x32, start=2, end=3), to=FLOAT)
    gram = b.op("Div", gram_sum, n)
    mean = b.op("ReduceMean", x32, b.const(2), keepdims=0)
    mixing, shift = _mixing(b, gram, mean, w, alpha, eye)
    mixing_t = b.op("CastLike", b.op("Transpose", mixing, perm=[0, 2, 1]), xr)
    return b.op("MatMul", mixing_t, xr), b.op("CastLike", b.op("Unsqueeze", shift, b.const([2, 3])), xr)


def _unfolded_maps(b: _Block, w, x32, xr, alpha) -> tuple[str, str]:

    def linear(weight: str, source: str) -> str:
        return b.op("MatMul", b.op("Transpose", weight, perm=[1, 0]), source)

    def project(weight: str, bias: str, source: str) -> str:
        return b.op("Add", linear(weight, source), b.op("Unsqueeze", bias, b.const(1)))

    keys, values = project(w["Wk"], w["bk"], x32), project(w["Wv"], w["bv"], x32)
    m = b.op("ReduceMean", b.op("Mul", keys, values), b.const(2), keepdims=1)
    wq, bq = b.op("CastLike", w["Wq"], xr), b.op("CastLike", w["bq"], xr)
    wo, bo = b.op("CastLike", w["Wo"], xr), b.op("CastLike", w["bo"], xr)
    z = b.op("Mul", project(wq, bq, xr), b.op("CastLike", m, xr))
    main = b.op("Add", b.op("Mul", b.op("CastLike", alpha, xr), xr), linear(wo, z))
    return main, b.op("Unsqueeze", bo, b.const([0, 2, 3]))


def _folded_tokens(b: _Block, w, x32, x, alpha, eye) -> tuple[str, str]:
    gram_sum = b.op("MatMul", b.op("Transpose", x32, perm=[0, 2, 1]), x32)
    n = b.op("Cast", b.op("Shape", x32, start=1, end=2), to=FLOAT)
    gram = b.op("Div", gram_sum, n)
    mean = b.op("ReduceMean", x32, b.const(1), keepdims=0)
    mixing, shift = _mixing(b, gram, mean, w, alpha, eye)
    return (b.op("MatMul", x, b.op("CastLike", mixing, x)),
            b.op("CastLike", b.op("Unsqueeze", shift, b.const(1)), x))


def _unfolded_tokens(b: _Block, w, x32, x, alpha) -> tuple[str, str]:
    keys = b.op("Add", b.op("MatMul", x32, w["Wk"]), w["bk"])
    values = b.op("Add", b.op("MatMul", x32, w["Wv"]), w["bv"])
    m = b.op("ReduceMean", b.op("Mul", keys, values), b.const(1), keepdims=1)
    query = b.op("Add", b.op("MatMul", x, b.op("CastLike", w["Wq"], x)), b.op("CastLike", w["bq"], x))
    z = b.op("Mul", query, b.op("CastLike", m, x))
    main = b.op("Add", b.op("Mul", b.op("CastLike", alpha, x), x), b.op("MatMul", z, b.op("CastLike", w["Wo"], x)))
    return main, b.op("Unsqueeze", b.op("CastLike", w["bo"], x), b.const([0, 1]))


def unfolded_condition(b: _Block, layout: str, x: str, channels: str, inner: str) -> str:
    """Bool [1]: ``nn.functional.body_prefers_unfolded`` for X of ``layout`` and weights of C, C' channels.

    The conditions on C and C' alone are constant once the weights are known; the one on N
    (``folded_costs_more``: den C (N + C') > 2 num N C') is constant only where N is static.
    """
    unfolded = b.op("LessOrEqual", b.op("Mul", inner, b.const(round(1 / UNFOLDED_MAX_RATIO))), channels)
    if layout == contract.LAYOUT_TOKENS:
        wide = b.op("GreaterOrEqual", channels, b.const(BODY_UNFOLDED_TOKENS_MIN_CHANNELS))
        unfolded = b.op("Or", unfolded, wide)
    n = (b.op("ReduceProd", b.op("Shape", x, start=2), keepdims=1) if layout == contract.LAYOUT_MAPS
         else b.op("Shape", x, start=1, end=2))
    num, den = FOLDED_FLOPS_MARGIN
    folded_cost = b.op("Mul", b.op("Mul", b.const(den), channels), b.op("Add", n, inner))
    few_positions = b.op("Greater", folded_cost, b.op("Mul", b.op("Mul", b.const(2 * num), n), inner))
    return b.op("Or", unfolded, few_positions)


def _body(top: _Block, layout: str | None, unfolded: bool | None, gram_blocks: int | None) -> None:
    """Nodes of the block into ``top``, ending on the Add that writes Y; None for a choice means:
    decide with an If (folded by runtimes where its condition is constant).

    Where the form's If stays at run time, ONNX Runtime copies a value that would cross it as an
    alias: a Reshape or Cast of X made before it (measured: 1.3 ms each at C = 256, N = 128^2), a
    Reshape that ends a branch (3.5 ms). So each form reshapes and casts X itself and returns its
    output flat, straight from its last GEMM; the Reshape to X's shape and the bias Add follow the
    If. The bias is shaped for X's layout, so that the branch of the other layout, which TensorRT
    builds too, stays shape-valid, with the same rank in both forms (TensorRT's conditional outputs
    need equal ranks where the condition is not a build-time constant).
    """
    w = {name: top.op("Cast", name, to=FLOAT) for name in contract.INPUT_NAMES[1:]}
    x, y = contract.INPUT_NAMES[0], contract.OUTPUT_NAMES[0]
    alpha = _attribute_constant(top, "alpha")
    channels = top.op("Shape", "Wq", start=0, end=1)
    # Read here, not in a branch: ONNX Runtime will not drop a no-op Cast (float32 weights) whose output
    # a branch reads beside its input, and logs a warning for each.
    inner = top.op("Shape", "Wq", start=1, end=2) if unfolded is None else None
    eye = top.op("EyeLike", top.op("ConstantOfShape", top.op("Concat", channels, channels, axis=0),
                                   value=helper.make_tensor("zero", FLOAT, [1], [0.0])))
    # Both layouts reshape X with C taken from the weights, so each branch is shape-consistent for any
    # input: runtimes check the shapes of an If's untaken branch too (static H, W or N included).
    batch = top.op("Shape", x, start=0, end=1)

    def choose(b: _Block, block_layout: str, unfolded_form, folded_form) -> tuple[str, str]:
        """The unfolded form where the weights' shapes call for it or, per call, at few positions.

        One If on both conditions (``nn.functional.body_prefers_unfolded``): runtimes fold it where N
        is static and decide per call where it is dynamic, up to about 12 us a block on ONNX Runtime CPU.
        An If on N nested in an If on the weights (which would fold where the weights alone decide)
        crashed ONNX Runtime 1.32 at session creation, or lost implicit inputs of the inner branches.
        """
        if unfolded is not None:
            main, shift = (unfolded_form if unfolded else folded_form)(b)
            return b.op("Reshape", main, b.op("Shape", x)), shift
        prefix = block_layout[0]
        then_b = b.branch(prefix + "u_", lambda c: list(unfolded_form(c)))
        else_b = b.branch(prefix + "f_", lambda c: list(folded_form(c)))
        main, shift = b.multi_op("If", 2, unfolded_condition(b, block_layout, x, channels, inner),
                                 then_branch=then_b.graph("unfolded"), else_branch=else_b.graph("folded"))
        return b.op("Reshape", main, b.op("Shape", x)), shift

    def gram_sum(b: _Block, xr32: str, tiers=BODY_GRAM_BLOCKS) -> str:
        """X X^T with ``gram_blocks`` blocks, else nested Ifs on C down the table of tiers."""
        def product(c: _Block, blocks: int) -> str:
            if blocks == 1:
                return c.op("MatMul", xr32, c.op("Transpose", xr32, perm=[0, 2, 1]))
            return _block_triangle_gram_sum_maps(c, xr32, channels, blocks)

        if gram_blocks is not None:
            return product(b, gram_blocks)
        if not tiers:
            return product(b, 1)
        (min_channels, blocks), lower = tiers[0], tiers[1:]
        wide = b.op("GreaterOrEqual", channels, b.const(min_channels))
        tier = f"g{blocks}_"
        return b.op("If", wide, then_branch=b.branch(tier + "t_", lambda c: [product(c, blocks)]).graph("blocks"),
                    else_branch=b.branch(tier + "e_", lambda c: [gram_sum(c, xr32, lower)]).graph("narrower"))

    def flat(b: _Block, shape: list[str]) -> tuple[str, str]:
        """X reshaped to ``shape`` (B,C,N for maps, B,N,C for tokens) and in float32."""
        reshaped = b.op("Reshape", x, b.op("Concat", *shape, axis=0))
        return reshaped, b.op("Cast", reshaped, to=FLOAT)

    def maps(b: _Block) -> tuple[str, str]:
        def unfolded_form(c: _Block) -> tuple[str, str]:
            xr, xr32 = flat(c, [batch, channels, c.const(-1)])
            return _unfolded_maps(c, w, xr32, xr, alpha)

        def folded_form(c: _Block) -> tuple[str, str]:
            xr, xr32 = flat(c, [batch, channels, c.const(-1)])
            return _folded_maps(c, w, xr32, xr, alpha, eye, gram_sum(c, xr32))

        return choose(b, contract.LAYOUT_MAPS, unfolded_form, folded_form)

    def tokens(b: _Block) -> tuple[str, str]:
        def unfolded_form(c: _Block) -> tuple[str, str]:
            xt, x32 = flat(c, [batch, c.const(-1), channels])
            return _unfolded_tokens(c, w, x32, xt, alpha)

        def folded_form(c: _Block) -> tuple[str, str]:
            xt, x32 = flat(c, [batch, c.const(-1), channels])
            return _folded_tokens(c, w, x32, xt, alpha, eye)

        return choose(b, contract.LAYOUT_TOKENS, unfolded_form, folded_form)

    if layout is not None:
        main, shift = (maps if layout == contract.LAYOUT_MAPS else tokens)(top)
    else:
        # The layout follows from the rank of X (4: maps, 3: tokens). Shape(Shape(X)) is known before
        # run time even with dynamic dims, so runtimes fold the If; TensorRT's parser cannot read
        # string constants, which comparing the `layout` attribute would need.
        rank = top.op("Shape", top.op("Shape", x))
        is_maps = top.op("Equal", rank, top.const(4))
        maps_b = top.branch("maps_", lambda c: list(maps(c)))
        tokens_b = top.branch("tokens_", lambda c: list(tokens(c)))
        main, shift = top.multi_op("If", 2, is_maps, then_branch=maps_b.graph("maps"),
                                   else_branch=tokens_b.graph("tokens"))
    top.nodes.append(helper.make_node("Add", [main, shift], [y]))


def build_function(opset: int, layout: str | None = None, unfolded: bool | None = None,
                   name: str = contract.OP_TYPE, domain: str = contract.DOMAIN,
                   gram_blocks: int | None = None) -> onnx.FunctionProto:
    """FunctionProto polynl::PolyNL(X, Wq, bq, Wk, bk, Wv, bv, Wo, bo) -> Y with attributes alpha, layout.

    Without ``layout``/``unfolded``/``gram_blocks`` the body serves every block (If nodes decide);
    with them it is specialized for one block and holds no If (used to inline blocks into standard
    ops, and by ``benchmarks/body_forms.py`` to time each form).
    """
    top = _Block("")
    _body(top, layout, unfolded, gram_blocks)
    return helper.make_function(
        domain, name, list(contract.INPUT_NAMES), list(contract.OUTPUT_NAMES),
        top.nodes, [helper.make_opsetid("", opset)],
        attributes=["alpha", "layout"],
        doc_string=__doc__.split("\n\n")[0],
    )
