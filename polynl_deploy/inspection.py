"""inspect_model: what an ONNX file holds, and whether it is ready for the TensorRT plugin."""

import collections
import json
from dataclasses import dataclass, field

import onnx

from polynl_deploy import contract
from polynl_deploy.export.schema import register_schema
from polynl_deploy.onnx_file import load_onnx, metadata, value_dims, value_specs


@dataclass
class PolyNLNodeInfo:
    name: str
    attributes: dict[str, object]
    input_shape: list
    weight_shapes: dict[str, list]
    channels: int | None
    inner_channels: int | None


@dataclass
class ModelSummary:
    path: str
    ir_version: int
    opsets: dict[str, int]
    producer: str
    metadata: dict[str, str]
    functions: list[str]
    inputs: list[dict]
    outputs: list[dict]
    op_counts: dict[str, int]
    polynl_nodes: list[PolyNLNodeInfo] = field(default_factory=list)
    plugin_issues: list[str] = field(default_factory=list)

    @property
    def plugin_ready(self) -> bool:
        """True when every PolyNL node carries what TensorRT's parser needs to map it to the plugin."""
        return bool(self.polynl_nodes) and not self.plugin_issues


def _plugin_issues(node: onnx.NodeProto, attrs: dict, has_function: bool) -> list[str]:
    issues = []
    for key, want in (("plugin_namespace", contract.PLUGIN_NAMESPACE), ("plugin_version", contract.PLUGIN_VERSION)):
        if attrs.get(key) != want:
            issues.append(f"node {node.name!r}: attribute {key}={attrs.get(key)!r}, plugin expects {want!r}")
    if attrs.get("layout", contract.LAYOUT_MAPS) not in contract.LAYOUTS:
        issues.append(f"node {node.name!r}: layout {attrs.get('layout')!r} not in {contract.LAYOUTS}")
    if not has_function:
        issues.append("no model-local PolyNL function: runtimes without the plugin cannot run this file")
    return issues


def inspect_model(path) -> ModelSummary:
    """Summarize ``path``: opsets, functions, op counts, PolyNL nodes with attributes and shapes."""
    model = load_onnx(path)
    register_schema()
    inference_error = None
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except onnx.shape_inference.InferenceError as exc:  # reported below: the PolyNL schema names the node
        inferred, inference_error = model, str(exc).strip()
    shapes = {v.name: value_dims(v.type) for v in [*inferred.graph.input, *inferred.graph.value_info,
                                              *inferred.graph.output]}
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    functions = [f"{f.domain}::{f.name}" for f in model.functions]
    has_function = f"{contract.DOMAIN}::{contract.OP_TYPE}" in functions
    summary = ModelSummary(
        path=str(path), ir_version=model.ir_version,
        opsets={o.domain or "ai.onnx": o.version for o in model.opset_import},
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        metadata=metadata(model), functions=functions,
        inputs=value_specs(model.graph.input), outputs=value_specs(model.graph.output),
        op_counts=dict(collections.Counter(
            f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in model.graph.node)))
    for node in model.graph.node:
        if not contract.is_polynl_node(node):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        weight_shapes = {name: weights.get(value, shapes.get(value, []))
                         for name, value in zip(contract.INPUT_NAMES[1:], node.input[1:])}
        wq = weight_shapes.get("Wq") or [None, None]
        summary.polynl_nodes.append(PolyNLNodeInfo(
            node.name, attrs, shapes.get(node.input[0], []), weight_shapes,
            wq[0] if len(wq) == 2 else None, wq[1] if len(wq) == 2 else None))
        summary.plugin_issues.extend(_plugin_issues(node, attrs, has_function))
    if summary.polynl_nodes and summary.opsets.get(contract.DOMAIN) != contract.OP_VERSION:
        summary.plugin_issues.append(f"opset import for domain {contract.DOMAIN!r} is "
                                     f"{summary.opsets.get(contract.DOMAIN)}, expected {contract.OP_VERSION}")
    if inference_error and summary.polynl_nodes:
        summary.plugin_issues.append(f"ONNX shape inference fails: {inference_error}")
    summary.plugin_issues = list(dict.fromkeys(summary.plugin_issues))
    return summary


def to_json(summary: ModelSummary) -> str:
    from dataclasses import asdict
    return json.dumps({**asdict(summary), "plugin_ready": summary.plugin_ready}, indent=2, default=str)


def render(summary: ModelSummary, console) -> None:
    from rich.table import Table

    console.print(f"[bold]{summary.path}[/]  IR {summary.ir_version}, opsets "
                  + ", ".join(f"{d} {v}" for d, v in summary.opsets.items())
                  + f", producer {summary.producer or '?'}")
    io = Table(title="inputs and outputs")
    for column in ("kind", "name", "dtype", "shape"):
        io.add_column(column)
    for kind, specs in (("input", summary.inputs), ("output", summary.outputs)):
        for s in specs:
            io.add_row(kind, s["name"], s["dtype"], "x".join(map(str, s["shape"])))
    console.print(io)
    console.print("functions: " + (", ".join(summary.functions) or "none"))
    console.print(f"{len(summary.polynl_nodes)} Poly-NL block(s)")
    if summary.polynl_nodes:
        nodes = Table(title="PolyNL nodes")
        for column in ("node", "C", "C'", "alpha", "layout", "X shape", "plugin"):
            nodes.add_column(column)
        for n in summary.polynl_nodes:
            nodes.add_row(n.name, str(n.channels), str(n.inner_channels), f"{n.attributes.get('alpha', 1.0):.4g}",
                          str(n.attributes.get("layout")), "x".join(map(str, n.input_shape)),
                          f"{n.attributes.get('plugin_namespace')}/{n.attributes.get('plugin_version')}")
        console.print(nodes)
        console.print("ready for the TensorRT plugin: " + ("[green]yes" if summary.plugin_ready else "[red]no"))
        for issue in summary.plugin_issues:
            console.print(f"  [red]-[/] {issue}")
