"""Loading ONNX files with errors that say what is wrong with the file."""

from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from polynl_deploy.errors import ModelFileError
from polynl_deploy.export.schema import register_schema


def load_onnx(path, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Read an ONNX file; missing, empty, truncated or non-ONNX files raise ModelFileError."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: file is empty")
    register_schema()
    try:
        model = onnx.load_model(str(path), load_external_data=load_external_data)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelFileError(f"{path}: not a readable ONNX model (truncated or another format?): {exc}") from exc
    if not model.graph.node and not model.graph.output:
        raise ModelFileError(f"{path}: parsed, but holds no graph (not an ONNX model?)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelFileError(f"{path}: invalid ONNX model: {exc}") from exc
    return model


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


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
