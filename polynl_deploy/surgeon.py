"""onnx-graphsurgeon passes between standard-op Poly-NL subgraphs and polynl::PolyNL nodes.

``fuse`` finds the subgraph that a plain ``torch.onnx.export(..., dynamo=True)`` of a
PolyNL2d / PolyNLTokens block produces (impl "naive" or "folded"; BatchNorm kept or folded
into the output Conv; alpha and beta as scalar Muls) and replaces it with one PolyNL node
whose weights are read from the graph's constants. ``decompose`` replaces every PolyNL node
by standard ops through the exporter's specialized function bodies (``to_standard_ops``).
The ``*_model`` functions add what a graph cannot hold (the model-local function, metadata);
the ``*_file`` functions read and write files atomically.
"""

import itertools
import logging
import math
import re
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from polynl_deploy import contract
from polynl_deploy.errors import ExportError, SurgeryError
from polynl_deploy.export.exporter import attach_function, to_standard_ops
from polynl_deploy.export.schema import register_schema
from polynl_deploy.io import atomic_path, check_outputs
from polynl_deploy.onnx_file import load_onnx, shapes_at

log = logging.getLogger(__name__)

_TRANSPOSE_LAST_TWO = [0, 2, 1]
_POOLED_AXES = {contract.LAYOUT_MAPS: (4, {2, 3}), contract.LAYOUT_TOKENS: (3, {1})}
"""Rank of X and the position axes that ReduceMean averages over, per layout."""


# --- reading the graph ---------------------------------------------------------------------

def _producer(tensor: gs.Tensor, op: str) -> gs.Node | None:
    """The node of type ``op`` that produces ``tensor``, if that is what produces it."""
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == op:
        return tensor.inputs[0]
    return None


def _constant(tensor: gs.Tensor, depth: int = 3) -> np.ndarray | None:
    """The value of ``tensor`` if it is known without running the model, else None.

    Besides initializers and Constant nodes this reads the small unfolded constant expressions
    (up to ``depth`` nodes deep) torch.onnx leaves in blocks: zero biases as ConstantOfShape, their products.
    """
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) != 1:
        return None
    node = tensor.inputs[0]
    if node.op == "Constant" and isinstance(node.attrs.get("value"), gs.Constant):
        return np.asarray(node.attrs["value"].values)
    if depth == 0 or node.op not in ("ConstantOfShape", "Mul", "Add"):
        return None
    operands = []
    for operand in node.inputs:
        operands.append(_constant(operand, depth - 1))
        if operands[-1] is None:
            return None
    if node.op == "ConstantOfShape":
        fill = node.attrs.get("value")
        fill = np.asarray(fill.values).reshape(()) if isinstance(fill, gs.Constant) else np.float32(0)
        return np.full(operands[0].astype(np.int64), fill, dtype=fill.dtype)
    return (np.multiply if node.op == "Mul" else np.add)(*operands)


def _split_constant(node: gs.Node) -> tuple[np.ndarray, gs.Tensor] | None:
    """For a binary node with one constant operand: (that constant, the other operand)."""
    for const_input, other in itertools.permutations(node.inputs):
        value = _constant(const_input)
        if value is not None and _constant(other) is None:
            return value, other
    return None


def _scaled(tensor: gs.Tensor) -> list[tuple[float, gs.Tensor]]:
    """Readings of ``tensor`` as s * t: (s, t) for a Mul by a scalar constant, and always (1, tensor)."""
    readings = [(1.0, tensor)]
    node = _producer(tensor, "Mul")
    split = _split_constant(node) if node is not None else None
    if split is not None and split[0].size == 1:
        readings.insert(0, (float(split[0].reshape(())), split[1]))
    return readings


def _is_widened(tensor: gs.Tensor, source: gs.Tensor) -> bool:
    """``tensor`` is ``source``, or ``source`` cast to float32/float64 (fp16 exports widen X for its statistics)."""
    cast = _producer(tensor, "Cast")
    return tensor is source or (cast is not None and cast.inputs[0] is source
                                and cast.attrs.get("to") in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE))


def _uncast(tensor: gs.Tensor) -> gs.Tensor:
    """The input of the Cast that produces ``tensor``, else ``tensor`` (fp16 exports narrow M and the shift)."""
    cast = _producer(tensor, "Cast")
    return tensor if cast is None else cast.inputs[0]


def _is_transpose_of(tensor: gs.Tensor, source: gs.Tensor) -> bool:
    node = _producer(tensor, "Transpose")
    return node is not None and node.inputs[0] is source and node.attrs.get("perm") == _TRANSPOSE_LAST_TWO


def _axes(node: gs.Node, rank: int) -> set[int] | None:
    """Axes of a Reduce* node (input since opset 18, attribute before), made non-negative."""
    axes = _constant(node.inputs[1]) if len(node.inputs) > 1 else node.attrs.get("axes")
    return None if axes is None else {int(a) % rank for a in np.ravel(axes)}


def _reduces(tensor: gs.Tensor, op: str, rank: int, axes: set[int], keepdims: int) -> gs.Tensor | None:
    """The input of ``tensor = op(input, axes, keepdims)``, or None."""
    node = _producer(tensor, op)
    if node is None or node.attrs.get("keepdims", 1) != keepdims or _axes(node, rank) != axes:
        return None
    return node.inputs[0]


class _Probe:
    """The graph's shapes with every dynamic dim of its inputs set to a probe size (ONNX shape inference
    with data propagation), to evaluate the size arithmetic torch.onnx writes: the Gram matrix's divisor
    is expressed through the model input's shape, not the block's."""

    SIZES = (2, 29, 31, 37, 41, 43)
    """Batch first, then distinct primes, so that N and other sizes do not meet by chance."""

    def __init__(self, graph: gs.Graph) -> None:
        model = gs.export_onnx(graph)
        sizes = iter(self.SIZES * 4)
        probe = {value.name: [d.dim_value if d.HasField("dim_value") else next(sizes)
                              for d in value.type.tensor_type.shape.dim] for value in model.graph.input}
        self.shapes = shapes_at(model, probe)

    def may_be_positions(self, divisor: gs.Tensor, flat_x: gs.Tensor, layout: str) -> bool:
        """False only where the probe shows that ``divisor`` differs from N, the positions of ``flat_x``."""
        shape = self.shapes.get(flat_x.name, ())
        positions = shape[1 if layout == contract.LAYOUT_TOKENS else 2] if len(shape) == 3 else None
        reshape = _producer(flat_x, "Reshape")
        if positions is None and layout == contract.LAYOUT_MAPS and reshape is not None:
            maps_shape = self.shapes.get(reshape.inputs[0].name, ())  # (B, C, H, W) flattened to (B, C, N)
            positions = math.prod(maps_shape[2:]) if len(maps_shape) == 4 and None not in maps_shape else None
        value = self._value(divisor)
        if positions is None or value is None or value.size != 1:
            return True
        return float(value.reshape(())) == positions

    def _value(self, tensor: gs.Tensor, depth: int = 8) -> np.ndarray | None:
        """``tensor`` computed from constants and probe shapes through the ops torch.onnx writes for sizes."""
        value = _constant(tensor)
        if value is not None or depth == 0 or len(tensor.inputs) != 1:
            return value
        node = tensor.inputs[0]
        if node.op == "Shape":
            shape = self.shapes.get(node.inputs[0].name)
            if shape is None or None in shape:
                return None
            return np.array(shape[node.attrs.get("start", 0):node.attrs.get("end")], np.int64)
        args = [self._value(t, depth - 1) for t in node.inputs]
        if any(a is None for a in args):
            return None
        axes = tuple(int(a) for a in np.ravel(args[1])) if len(args) > 1 else None
        evaluate = {
            "Squeeze": lambda: np.squeeze(args[0], axis=axes),
            "Unsqueeze": lambda: np.expand_dims(args[0], axes),
            "Cast": lambda: args[0].astype(onnx.helper.tensor_dtype_to_np_dtype(node.attrs["to"])),
            "Gather": lambda: np.take(args[0], args[1], axis=node.attrs.get("axis", 0)),
            "Concat": lambda: np.concatenate(args, axis=node.attrs["axis"]),
            "Mul": lambda: args[0] * args[1],
            "Sub": lambda: args[0] - args[1],
            "Add": lambda: args[0] + args[1],
        }.get(node.op)
        return None if evaluate is None else np.asarray(evaluate())


# --- the pieces of a block -----------------------------------------------------------------

@dataclass
class _Linear:
    """y = source @ weight + bias, in the block's layout (weight (in, out), bias (out,))."""
    source: gs.Tensor
    weight: np.ndarray
    bias: np.ndarray


def _pointwise_conv(tensor: gs.Tensor) -> _Linear | None:
    node = _producer(tensor, "Conv")
    if node is None or len(node.inputs) < 2:
        return None
    weight = _constant(node.inputs[1])
    attrs = node.attrs
    plain = (attrs.get("group", 1) == 1 and attrs.get("auto_pad", "NOTSET") in ("NOTSET", b"NOTSET")
             and not any(attrs.get("pads", [0]))
             and all(v == 1 for v in [*attrs.get("strides", []), *attrs.get("dilations", [])]))
    if weight is None or weight.ndim != 4 or weight.shape[2:] != (1, 1) or not plain:
        return None
    bias = _constant(node.inputs[2]) if len(node.inputs) > 2 else np.zeros(weight.shape[0], weight.dtype)
    if bias is None:
        return None
    return _Linear(node.inputs[0], weight[:, :, 0, 0].T, bias)


def _dense(tensor: gs.Tensor) -> _Linear | None:
    """MatMul by a constant matrix, optionally followed by Add of a constant bias vector."""
    bias = None
    add = _producer(tensor, "Add")
    if add is not None:
        split = _split_constant(add)
        if split is None or split[0].ndim != 1:
            return None
        bias, tensor = split
    matmul = _producer(tensor, "MatMul")
    if matmul is None:
        return None
    weight = _constant(matmul.inputs[1])
    if weight is None or weight.ndim != 2 or _constant(matmul.inputs[0]) is not None:
        return None
    if bias is None:
        bias = np.zeros(weight.shape[1], weight.dtype)
    return _Linear(matmul.inputs[0], weight, bias) if bias.shape == (weight.shape[1],) else None


def _linear(tensor: gs.Tensor, layout: str) -> _Linear | None:
    return _pointwise_conv(tensor) if layout == contract.LAYOUT_MAPS else _dense(tensor)


def _batch_norm(tensor: gs.Tensor) -> tuple[gs.Tensor, np.ndarray, np.ndarray] | None:
    """(input, scale, shift) of an inference BatchNormalization: y = input * scale + shift per channel."""
    node = _producer(tensor, "BatchNormalization")
    if node is None or node.attrs.get("training_mode", 0) or len(node.outputs) != 1:
        return None
    params = [_constant(t) for t in node.inputs[1:5]]
    if any(p is None for p in params):
        return None
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    scale = gamma / np.sqrt(var + node.attrs.get("epsilon", 1e-5))
    return node.inputs[0], scale, beta - mean * scale


def _norm(tensor: gs.Tensor, layout: str) -> tuple[gs.Tensor, np.ndarray | None, np.ndarray | None]:
    """Strip a channel BatchNorm after the output projection; (tensor, None, None) when there is none."""
    if layout == contract.LAYOUT_TOKENS:  # BatchNorm1d over channels: Transpose, BN, Transpose
        outer = _producer(tensor, "Transpose")
        if outer is None or outer.attrs.get("perm") != _TRANSPOSE_LAST_TWO:
            return tensor, None, None
        found = _batch_norm(outer.inputs[0])
        if found is None or _producer(found[0], "Transpose") is None:
            return tensor, None, None
        inner = _producer(found[0], "Transpose")
        if inner.attrs.get("perm") != _TRANSPOSE_LAST_TWO:
            return tensor, None, None
        return inner.inputs[0], found[1], found[2]
    found = _batch_norm(tensor)
    return found if found is not None else (tensor, None, None)


# --- the projected term P = ((X Wq + bq) * m) Wo + bo, in either exported form -------------

def _naive_projection(projected: gs.Tensor, x: gs.Tensor, layout: str) -> dict[str, np.ndarray] | None:
    """impl="naive": K, V, Q projections of X, ReduceMean(K * V), Mul by Q, output projection."""
    out = _linear(projected, layout)
    product = _producer(out.source, "Mul") if out is not None else None
    if product is None:
        return None
    rank, axes = _POOLED_AXES[layout]
    for query_tensor, pooled in itertools.permutations(product.inputs):
        key_value = _reduces(pooled, "ReduceMean", rank, axes, keepdims=1)
        key_value = _producer(key_value, "Mul") if key_value is not None else None
        if key_value is None:
            continue
        query, key, value = (_linear(t, layout) for t in (query_tensor, *key_value.inputs))
        if all(p is not None and p.source is x for p in (query, key, value)):
            return {"Wq": query.weight, "bq": query.bias, "Wk": key.weight, "bk": key.bias,
                    "Wv": value.weight, "bv": value.bias, "Wo": out.weight, "bo": out.bias}
    return None


def _add_leaves(tensor: gs.Tensor) -> list[gs.Tensor]:
    """Summands of a tree of Add nodes."""
    add = _producer(tensor, "Add")
    if add is None:
        return [tensor]
    return [leaf for t in add.inputs for leaf in _add_leaves(t)]


def _constant_times_matmul(tensor: gs.Tensor) -> tuple[np.ndarray, gs.Tensor, np.ndarray] | None:
    """c * (a @ W) with constants c and W: (c, a, W)."""
    mul = _producer(tensor, "Mul")
    split = _split_constant(mul) if mul is not None else None
    matmul = _producer(split[1], "MatMul") if split is not None else None
    weight = _constant(matmul.inputs[1]) if matmul is not None else None
    return None if weight is None else (split[0], matmul.inputs[0], weight)


def _pooled_mean(leaves: list[gs.Tensor], flat_x: gs.Tensor, layout: str, probe: "_Probe"):
    """Wk, bk, Wv, bv from the summands of m = sum(Wk * (S Wv)) + bk (mu Wv) + bv (mu Wk) + bk bv."""
    quadratic = [t for t in leaves if _producer(t, "ReduceSum") is not None]
    if len(quadratic) != 1 or _reduces(quadratic[0], "ReduceSum", 3, {1}, keepdims=0) is None:
        return None
    found = _constant_times_matmul(_producer(quadratic[0], "ReduceSum").inputs[0])
    if found is None or not _is_gram_of(found[1], flat_x, layout, probe):
        return None
    wk, _, wv = found
    bk, bv = np.zeros(wk.shape[1]), np.zeros(wk.shape[1])
    constant_term = np.zeros(wk.shape[1])
    positions_axis = 2 if layout == contract.LAYOUT_MAPS else 1
    for leaf in leaves:
        if leaf is quadratic[0]:
            continue
        if _constant(leaf) is not None:
            constant_term = constant_term + _constant(leaf)
            continue
        linear = _constant_times_matmul(leaf)
        mean_source = _reduces(linear[1], "ReduceMean", 3, {positions_axis}, keepdims=0) if linear else None
        if mean_source is None or not _is_widened(mean_source, flat_x):
            return None
        if np.array_equal(linear[2], wv):
            bk = bk + linear[0]
        elif np.array_equal(linear[2], wk):
            bv = bv + linear[0]
        else:
            return None
    if not np.allclose(constant_term, bk * bv, rtol=1e-4, atol=1e-6):
        return None
    return wk, bk, wv, bv


def _is_gram_of(gram: gs.Tensor, flat_x: gs.Tensor, layout: str, probe: "_Probe") -> bool:
    """gram = X^T X / N (tokens) or X X^T / N (flattened maps), X possibly widened to float32. A divisor
    that the probe shows is not N (N - 1, say) makes it another layer, whose statistics PolyNL would change."""
    div = _producer(gram, "Div")
    matmul = _producer(div.inputs[0], "MatMul") if div is not None else None
    if matmul is None:
        return False
    left, right = matmul.inputs
    if layout == contract.LAYOUT_MAPS:
        product = _is_widened(left, flat_x) and _is_transpose_of(right, left)
    else:
        product = _is_transpose_of(left, right) and _is_widened(right, flat_x)
    return product and probe.may_be_positions(div.inputs[1], flat_x, layout)


def _folded_projection(projected: gs.Tensor, x: gs.Tensor, layout: str, probe: "_Probe") -> dict[str, np.ndarray] | None:
    """impl="folded": P = X M + shift with M = Wq diag(m) Wo and m from the Gram matrix of X."""
    if layout == contract.LAYOUT_MAPS:
        reshape = _producer(projected, "Reshape")
        if reshape is None:
            return None
        projected = reshape.inputs[0]
    add = _producer(projected, "Add")
    if add is None:
        return None
    for product, unsqueezed_shift in itertools.permutations(add.inputs):
        unsqueeze = _producer(unsqueezed_shift, "Unsqueeze")
        matmul = _producer(product, "MatMul")
        if unsqueeze is None or matmul is None:
            continue
        if layout == contract.LAYOUT_MAPS:
            flat_x, mixing_t = matmul.inputs[1], matmul.inputs[0]
            reshape_x = _producer(flat_x, "Reshape")
            transpose = _producer(mixing_t, "Transpose")
            if reshape_x is None or reshape_x.inputs[0] is not x or transpose is None:
                continue
            mixing = transpose.inputs[0] if transpose.attrs.get("perm") == _TRANSPOSE_LAST_TWO else None
        else:
            flat_x, mixing = matmul.inputs
            if flat_x is not x:
                continue
        weights = (_mixing_and_shift(mixing, unsqueeze.inputs[0], flat_x, layout, probe) if mixing is not None
                   else None)
        if weights is not None:
            return weights
    return None


def _mixing_and_shift(mixing: gs.Tensor, shift: gs.Tensor, flat_x: gs.Tensor, layout: str, probe: "_Probe"):
    """Weights from M = (Wq * m[:, None, :]) @ Wo and shift = (bq * m) @ Wo + bo."""
    mixing, shift = _uncast(mixing), _uncast(shift)
    mixing_matmul = _producer(mixing, "MatMul")
    if mixing_matmul is None or _constant(mixing_matmul.inputs[1]) is None:
        return None
    wo = _constant(mixing_matmul.inputs[1])
    scaled_query = _producer(mixing_matmul.inputs[0], "Mul")
    split = _split_constant(scaled_query) if scaled_query is not None else None
    unsqueeze_m = _producer(split[1], "Unsqueeze") if split is not None else None
    if unsqueeze_m is None:
        return None
    wq, m = split[0].reshape(split[0].shape[-2:]), unsqueeze_m.inputs[0]
    bo = np.zeros(wo.shape[1], wo.dtype)
    shift_add = _producer(shift, "Add")
    if shift_add is not None:
        split = _split_constant(shift_add)
        if split is None:
            return None
        bo, shift = split
    shift_matmul = _producer(shift, "MatMul")
    scaled_bias = _producer(shift_matmul.inputs[0], "Mul") if shift_matmul is not None else None
    split = _split_constant(scaled_bias) if scaled_bias is not None else None
    if split is None or split[1] is not m or not np.array_equal(_constant(shift_matmul.inputs[1]), wo):
        return None
    pooled = _pooled_mean(_add_leaves(m), flat_x, layout, probe)
    if pooled is None:
        return None
    wk, bk, wv, bv = pooled
    return {"Wq": wq, "bq": split[0], "Wk": wk, "bk": bk, "Wv": wv, "bv": bv, "Wo": wo, "bo": bo}


# --- fuse ----------------------------------------------------------------------------------

@dataclass
class _Block:
    x: gs.Tensor
    layout: str
    alpha: float
    weights: dict[str, np.ndarray]  # contract inputs with beta and the norm folded into Wo, bo


def _match_block(add: gs.Node, probe: "_Probe") -> _Block | None:
    """Read ``add`` as Y = alpha * X + beta * norm(P(X)) for either layout and either exported form."""
    for residual, branch in itertools.permutations(add.inputs):
        for (alpha, x), (beta, normed), layout in itertools.product(_scaled(residual), _scaled(branch),
                                                                   contract.LAYOUTS):
            projected, scale, shift = _norm(normed, layout)
            weights = (_naive_projection(projected, x, layout) or _folded_projection(projected, x, layout, probe))
            if weights is not None:
                dtype = _numpy_dtype(x) or weights["Wq"].dtype
                return _Block(x, layout, alpha, _fold_scales(weights, beta, scale, shift, dtype))
    return None


def _numpy_dtype(tensor: gs.Tensor) -> np.dtype | None:
    """The NumPy dtype of ``tensor`` where the graph records one."""
    if tensor.dtype is None:
        return None
    try:
        return np.dtype(tensor.dtype)
    except TypeError:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.dtype))


def _fold_scales(weights: dict[str, np.ndarray], beta: float, scale, shift, dtype) -> dict[str, np.ndarray]:
    """beta * (P * scale + shift) folded into Wo, bo (as PolyNL2d.folded_weights does), in X's ``dtype``
    (the op's inputs share one type; an fp16 export keeps the folded form's weights in float32)."""
    folded = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    if scale is not None:
        folded["Wo"], folded["bo"] = folded["Wo"] * scale, folded["bo"] * scale + shift
    folded["Wo"], folded["bo"] = folded["Wo"] * beta, folded["bo"] * beta
    return {k: np.ascontiguousarray(v.astype(dtype)) for k, v in folded.items()}


def _constant_names(tensor: gs.Tensor, x: gs.Tensor) -> set[str]:
    """Names of the initializers that ``tensor`` is computed from, not looking past ``x``."""
    names, seen, pending = set(), {id(x)}, [tensor]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, gs.Constant):
            names.add(current.name)
        pending.extend(t for node in current.inputs for t in node.inputs)
    return names


def _module_name(add: gs.Node, x: gs.Tensor, index: int) -> str:
    """The PyTorch module's name where initializer names still carry it (``blocks.0.key.bias``)."""
    for name in sorted(_constant_names(add.outputs[0], x)):
        found = re.fullmatch(r"(?:(.*)\.)?(?:query|key|value|out)\.(?:weight|bias)", name)
        if found:
            return found.group(1) or "<root>"
    return str(index)


def polynl_nodes(graph: gs.Graph) -> list[gs.Node]:
    return [n for n in graph.nodes if n.op == contract.OP_TYPE and n.domain == contract.DOMAIN]


def fuse(graph: gs.Graph) -> gs.Graph:
    """Replace each Poly-NL standard-op subgraph by one polynl::PolyNL node (the graph is changed in place).

    Graphs without a match come back unchanged. The PolyNL function body is added by ``fuse_model``.
    """
    fused, probe = 0, _Probe(graph)
    for add in [n for n in graph.nodes if n.op == "Add"]:
        block = _match_block(add, probe) if add.outputs else None
        if block is None:
            continue
        name = f"{contract.OP_TYPE}/{_module_name(add, block.x, fused)}"
        weights = [gs.Constant(f"{name}.{key}", block.weights[key]) for key in contract.INPUT_NAMES[1:]]
        output = add.outputs[0]
        add.outputs.clear()
        graph.nodes.append(gs.Node(
            contract.OP_TYPE, name, domain=contract.DOMAIN, inputs=[block.x, *weights], outputs=[output],
            attrs={"alpha": block.alpha, "layout": block.layout, "plugin_namespace": contract.PLUGIN_NAMESPACE,
                   "plugin_version": contract.PLUGIN_VERSION}))
        fused += 1
    if fused:
        if not any(o.domain == contract.DOMAIN for o in graph.import_domains or []):
            graph.import_domains = [*(graph.import_domains or []),
                                    onnx.helper.make_opsetid(contract.DOMAIN, contract.OP_VERSION)]
        graph.cleanup().toposort()
    log.info("fused %d Poly-NL block(s)", fused)
    return graph


# --- decompose -----------------------------------------------------------------------------

def decompose(graph: gs.Graph) -> gs.Graph:
    """A graph with every PolyNL node replaced by standard ops (the exporter's ``to_standard_ops``)."""
    if not polynl_nodes(graph):
        return graph
    try:
        return gs.import_onnx(to_standard_ops(gs.export_onnx(graph)))
    except ExportError as exc:
        raise SurgeryError(f"cannot decompose: {exc}") from exc


# --- models and files ----------------------------------------------------------------------

def _checked(model: onnx.ModelProto, like: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """``model`` with the metadata of ``like``, checked by the full ONNX checker."""
    model.metadata_props.extend(like.metadata_props)
    model.producer_name, model.producer_version = like.producer_name, like.producer_version
    register_schema()
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise SurgeryError(f"{where}: rewritten model fails the ONNX checker: {exc}") from exc
    return model


def fuse_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``fuse`` on a model, plus the model-local PolyNL function; returns (model, blocks fused)."""
    graph = gs.import_onnx(model)
    before = len(polynl_nodes(graph))
    fused = len(polynl_nodes(fuse(graph))) - before
    if not fused:
        return model, 0
    proto = gs.export_onnx(graph)
    attach_function(proto)
    return _checked(proto, model, "fuse"), fused


def decompose_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``decompose`` on a model; returns (model, PolyNL nodes replaced)."""
    graph = gs.import_onnx(model)
    count = len(polynl_nodes(graph))
    if not count:
        return model, 0
    return _checked(gs.export_onnx(decompose(graph)), model, "decompose"), count


def _rewrite_file(src, dst, rewrite) -> int:
    check_outputs(files=[dst], inputs=[src])
    model, changed = rewrite(load_onnx(src))
    with atomic_path(dst) as tmp:
        onnx.save_model(model, str(tmp))
    return changed


def fuse_file(src, dst) -> int:
    """Fuse the Poly-NL blocks of ONNX file ``src`` into PolyNL nodes, write ``dst``; returns blocks fused."""
    return _rewrite_file(src, dst, fuse_model)


def decompose_file(src, dst) -> int:
    """Replace the PolyNL nodes of ``src`` by standard ops, write ``dst``; returns nodes replaced."""
    return _rewrite_file(src, dst, decompose_model)
