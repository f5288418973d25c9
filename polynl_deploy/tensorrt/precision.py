"""fp16/bf16 ONNX for strongly typed TensorRT networks (TensorRT 11 has no FP16 builder flag: the
network's own types decide). Float32 initializers and constants become the target type, and with
``keep_io_fp32`` the graph inputs and outputs stay float32 behind Cast nodes.

Model-local functions are left alone: the PolyNL body casts to float32 for its statistics and back
with CastLike, so convert a custom-op file *before* inlining it (``to_standard_ops``) to keep the
statistics in float32. Where a converted constant meets a float32 tensor (in the main graph or an
If branch of a standard-ops file whose statistics path is float32), it gets a float32 copy instead;
an If whose branches then return different float types has the float32 one cast down.
"""

import copy

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from polynl_deploy.errors import ExportError
from polynl_deploy.onnx_file import graphs_with_subgraphs, nodes_with_subgraphs

TARGET_TYPES = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
FLOAT = TensorProto.FLOAT
PRECISION_KEY = "polynl_deploy.precision"
_MIXED_OK = {"Cast", "CastLike", "Shape", "Size", "Reshape", "Expand", "Slice", "Gather", "Pow", "Resize",
             "Upsample", "ConstantOfShape", "Tile", "Range", "BatchNormalization", "If", "Loop", "Scan"}
"""Ops whose float inputs may legitimately differ in type (or whose extra inputs are not data)."""
_FLOAT32_ONLY_INPUTS = (("Resize", 2), ("Upsample", 1))
"""(op, input index) whose tensors ONNX allows only as float32: the scales."""
_MAX_REPAIR_ROUNDS = 20
_FP32_SUFFIX = "__fp32"


def _to_numpy_type(values: np.ndarray, elem_type: int) -> np.ndarray:
    if elem_type == TensorProto.FLOAT16:
        return values.astype(np.float16)
    import ml_dtypes
    return values.astype(ml_dtypes.bfloat16)


def _converted_tensor(tensor: onnx.TensorProto, elem_type: int) -> onnx.TensorProto:
    values = numpy_helper.to_array(tensor)
    return numpy_helper.from_array(_to_numpy_type(values, elem_type), tensor.name)


def _convert_constants(graph: onnx.GraphProto, elem_type: int) -> dict[str, onnx.TensorProto]:
    """Float32 initializers and Constant/ConstantOfShape values, in the graph and its subgraphs, to
    ``elem_type`` (but those that ONNX types as float32 only, such as Resize's scales); returns the
    float32 originals by name (for constants that must stay float32)."""
    float32_only = {node.input[index] for node in nodes_with_subgraphs(graph)
                    for op_type, index in _FLOAT32_ONLY_INPUTS
                    if node.op_type == op_type and len(node.input) > index and node.input[index]}
    originals = {}
    for tensor in (tensor for g in graphs_with_subgraphs(graph) for tensor in g.initializer):
        if tensor.data_type == FLOAT and tensor.name not in float32_only:
            originals[tensor.name] = copy.deepcopy(tensor)
            tensor.CopyFrom(_converted_tensor(tensor, elem_type))
    for node in (node for g in graphs_with_subgraphs(graph) for node in g.node):
        if node.op_type not in ("Constant", "ConstantOfShape") or node.output[0] in float32_only:
            continue
        for attribute in node.attribute:
            if attribute.name == "value" and attribute.t.data_type == FLOAT:
                if node.op_type == "Constant":
                    originals[node.output[0]] = copy.deepcopy(attribute.t)
                attribute.t.CopyFrom(_converted_tensor(attribute.t, elem_type))
            elif attribute.name == "value_float":
                originals[node.output[0]] = numpy_helper.from_array(np.array(attribute.f, np.float32))
                tensor = numpy_helper.from_array(_to_numpy_type(np.array(attribute.f, np.float32), elem_type))
                node.ClearField("attribute")
                node.attribute.append(helper.make_attribute("value", tensor))
                break
    return originals


def _retype_io(values, elem_type: int) -> None:
    for value in values:
        if value.type.tensor_type.elem_type == FLOAT:
            value.type.tensor_type.elem_type = elem_type


def _keep_io_fp32(graph: onnx.GraphProto, elem_type: int) -> None:
    """Float32 graph inputs feed a Cast to ``elem_type``; float32 graph outputs come from a Cast."""
    casts_in = []
    for value in graph.input:
        if value.type.tensor_type.elem_type != FLOAT:
            continue
        inner = f"{value.name}__to_low_precision"
        for node in nodes_with_subgraphs(graph):  # If/Loop branches may read graph inputs directly
            node.input[:] = [inner if i == value.name else i for i in node.input]
        casts_in.append(helper.make_node("Cast", [value.name], [inner], to=elem_type, name=f"{inner}/Cast"))
    for value in graph.output:
        if value.type.tensor_type.elem_type != FLOAT:
            continue
        inner = f"{value.name}__low_precision"
        for node in nodes_with_subgraphs(graph):
            node.output[:] = [inner if o == value.name else o for o in node.output]
            node.input[:] = [inner if i == value.name else i for i in node.input]
        graph.node.append(helper.make_node("Cast", [inner], [value.name], to=FLOAT, name=f"{value.name}/Cast"))
    for node in reversed(casts_in):
        graph.node.insert(0, node)


def _float_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element types of every typed value, subgraphs included, after (non-strict) shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {t.name: t.data_type for t in inferred.graph.initializer}
    for graph in graphs_with_subgraphs(inferred.graph):
        for value in [*graph.input, *graph.output, *graph.value_info]:
            if value.type.tensor_type.elem_type:
                types[value.name] = value.type.tensor_type.elem_type
    return types


def _repair_mixed_types(model: onnx.ModelProto, elem_type: int, originals: dict[str, onnx.TensorProto]) -> None:
    """Nodes that now mix float32 and ``elem_type`` inputs: their converted constants take a float32
    copy when a computed input is float32; otherwise float32 computed inputs are cast down."""
    for _ in range(_MAX_REPAIR_ROUNDS):
        types = _float_types(model)
        changed = False
        for graph, node in [(g, n) for g in graphs_with_subgraphs(model.graph) for n in g.node]:
            if node.op_type == "If":
                changed |= _align_branch_outputs(node, types, elem_type)
            if node.op_type in _MIXED_OK:
                continue
            float_inputs = [(i, types.get(name)) for i, name in enumerate(node.input)
                            if types.get(name) in (FLOAT, elem_type)]
            if len({t for _, t in float_inputs}) < 2:
                continue
            computed_fp32 = [i for i, t in float_inputs if t == FLOAT and node.input[i] not in originals
                             and not node.input[i].endswith(_FP32_SUFFIX)]
            if not computed_fp32:
                # Only float32 copies of constants, made in a round that still saw a float32 input
                # here (types upstream of an If settle over rounds): back to the converted constant.
                for i, t in float_inputs:
                    if t == FLOAT and node.input[i].endswith(_FP32_SUFFIX):
                        node.input[i] = node.input[i][:-len(_FP32_SUFFIX)]
                        changed = True
            else:
                constants = [i for i, t in float_inputs if t == elem_type and node.input[i] in originals]
                for i in constants:
                    node.input[i] = _fp32_copy(model.graph, node.input[i], originals)
                for i in [] if constants else computed_fp32:
                    low = f"{node.input[i]}__to_{elem_type}"
                    position = list(graph.node).index(node)
                    graph.node.insert(position, helper.make_node("Cast", [node.input[i]], [low], to=elem_type))
                    node.input[i] = low
                changed = True
        if not changed:
            used = {name for g in graphs_with_subgraphs(model.graph) for n in g.node for name in n.input}
            kept = [t for t in model.graph.initializer if not t.name.endswith(_FP32_SUFFIX) or t.name in used]
            del model.graph.initializer[:]
            model.graph.initializer.extend(kept)
            return
    raise ExportError("precision conversion: mixed float32/low-precision inputs remain after "
                      f"{_MAX_REPAIR_ROUNDS} repair rounds")


def _align_branch_outputs(node: onnx.NodeProto, types: dict[str, int], elem_type: int) -> bool:
    """An If whose branches return one output in float32 in one and ``elem_type`` in the other: the
    float32 one is cast down at the end of its branch. Returns whether anything changed."""
    then_branch, else_branch = (next(a.g for a in node.attribute if a.name == name)
                                for name in ("then_branch", "else_branch"))
    changed = False
    for then_out, else_out in zip(then_branch.output, else_branch.output):
        pair = {types.get(then_out.name), types.get(else_out.name)}
        if pair != {FLOAT, elem_type}:
            continue
        branch, value = ((then_branch, then_out) if types.get(then_out.name) == FLOAT else (else_branch, else_out))
        low = f"{value.name}__to_{elem_type}"
        branch.node.append(helper.make_node("Cast", [value.name], [low], to=elem_type))
        value.name = low
        value.ClearField("type")
        changed = True
    return changed


def _fp32_copy(graph: onnx.GraphProto, name: str, originals: dict[str, onnx.TensorProto]) -> str:
    copy_name = name + _FP32_SUFFIX
    if not any(t.name == copy_name for t in graph.initializer):
        tensor = copy.deepcopy(originals[name])
        tensor.name = copy_name
        graph.initializer.append(tensor)
    return copy_name


def convert_precision(model: onnx.ModelProto, precision: str, *, keep_io_fp32: bool = False) -> onnx.ModelProto:
    """A copy of ``model`` computing in ``precision`` ("fp32" returns an unchanged copy)."""
    model = copy.deepcopy(model)
    if precision == "fp32":
        return model
    if precision not in TARGET_TYPES:
        raise ExportError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
    elem_type = TARGET_TYPES[precision]
    graph = model.graph
    originals = _convert_constants(graph, elem_type)
    if keep_io_fp32:
        _keep_io_fp32(graph, elem_type)
    else:
        _retype_io(graph.input, elem_type)
        _retype_io(graph.output, elem_type)
    constant_types = {t.name: t.data_type for g in graphs_with_subgraphs(graph) for t in g.initializer}
    for subgraph in graphs_with_subgraphs(graph):
        del subgraph.value_info[:]
        if subgraph is not graph:  # branch outputs take their producers' new types
            for value in subgraph.output:
                if value.name in constant_types:
                    value.type.tensor_type.elem_type = constant_types[value.name]
                else:
                    value.ClearField("type")
    _repair_mixed_types(model, elem_type, originals)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        PRECISION_KEY: precision})
    return model


def convert_onnx_file(source, destination, precision: str, *, keep_io_fp32: bool = False) -> onnx.ModelProto:
    """Read ``source``, convert, check, save atomically. fp32/fp16 get the full checker with strict type
    and shape inference; bf16 only the structural checker, because opset 20 Conv (and other ops) list
    bfloat16 only from opset 22, although TensorRT accepts it."""
    from polynl_deploy.export.exporter import check_model
    from polynl_deploy.io import atomic_path
    from polynl_deploy.onnx_file import load_onnx

    converted = convert_precision(load_onnx(source), precision, keep_io_fp32=keep_io_fp32)
    if precision == "bf16":
        try:
            onnx.checker.check_model(converted)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"{destination}: bf16 conversion fails the ONNX checker: {exc}") from exc
    else:
        converted = check_model(converted, str(destination))
    with atomic_path(destination) as tmp:
        onnx.save_model(converted, str(tmp))
    return converted
