"""Loading ONNX files with errors that say what is wrong with the file, and walking their graphs."""

import copy
from pathlib import Path
from typing import Mapping, Sequence

import onnx
from google.protobuf.message import DecodeError

from polynl_deploy.errors import ModelFileError
from polynl_deploy.export.schema import register_schema
from polynl_deploy.io import require_file


def load_onnx(path, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Read an ONNX file; missing, empty, truncated or non-ONNX files raise ModelFileError."""
    path = require_file(path, ModelFileError)
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: file is empty")
    register_schema()
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelFileError(f"{path}: not a readable ONNX model (truncated or another format?): {exc}") from exc
    if load_external_data:
        _load_external_data(model, path)
    if not model.graph.node and not model.graph.output:
        raise ModelFileError(f"{path}: parsed, but holds no graph (not an ONNX model?)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelFileError(f"{path}: invalid ONNX model: {exc}") from exc
    return model


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Read the weights kept in external data files beside ``path``, naming any that is missing."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    tensors = [t for g in graphs_with_subgraphs(model.graph) for t in g.initializer if uses_external_data(t)]
    for location in sorted({ExternalDataInfo(t).location for t in tensors}):
        data = path.parent / location
        if not data.is_file():
            raise ModelFileError(f"{path}: its weights are stored in the external data file {data}, "
                                 "which is missing (copy it beside the model, or re-export)")
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (onnx.checker.ValidationError, ValueError, OSError) as exc:
        raise ModelFileError(f"{path}: cannot read its external data: {exc}") from exc


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def shapes_at(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int | None, ...]]:
    """The shape of every value with the graph inputs named in ``input_shapes`` fixed to those sizes: ONNX
    shape inference with data propagation on a copy whose recorded value shapes are dropped (they hold the
    export's symbols); dims it cannot size are None."""
    fixed = copy.deepcopy(model)
    for value in fixed.graph.input:
        for dim, size in zip(value.type.tensor_type.shape.dim, input_shapes.get(value.name, ())):
            dim.Clear()
            dim.dim_value = size
    del fixed.graph.value_info[:]
    for value in fixed.graph.output:
        value.type.tensor_type.ClearField("shape")
    register_schema()
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except onnx.shape_inference.InferenceError as exc:
        raise ModelFileError(f"ONNX shape inference fails on the model: {exc}") from None
    return {v.name: tuple(d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim)
            for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}


def graphs_with_subgraphs(graph: onnx.GraphProto):
    """``graph`` and every subgraph (If branch, loop body) nested in it, outermost first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                yield from graphs_with_subgraphs(subgraph)


def nodes_with_subgraphs(graph: onnx.GraphProto):
    """Every node of ``graph`` and of the subgraphs nested in it."""
    return (node for g in graphs_with_subgraphs(graph) for node in g.node)


def value_dims(value_type: onnx.TypeProto) -> list:
    """A tensor type's dims: numbers, or the names of dynamic axes."""
    return [d.dim_param or d.dim_value for d in value_type.tensor_type.shape.dim]


def value_specs(values) -> list[dict]:
    """Graph inputs or outputs as {"name", "dtype" (numpy name), "shape" (value_dims)}."""
    return [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
             "shape": value_dims(v.type)} for v in values]
