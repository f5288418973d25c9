"""export_onnx: a PyTorch model with Poly-NL blocks to ONNX, one PolyNL node per block."""

import collections
import copy
import json
import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Sequence

import onnx
import torch
from torch import nn

from polynl_deploy import __version__, contract, defaults
from polynl_deploy.errors import ExportError
from polynl_deploy.export.function_body import build_function
from polynl_deploy.export.schema import register_schema
from polynl_deploy.io import atomic_path
from polynl_deploy.nn import POLYNL_BLOCKS
from polynl_deploy.nn.functional import (body_always_unfolded, body_gram_blocks, body_prefers_unfolded,
                                          folded_min_positions)
from polynl_deploy.onnx_file import nodes_with_subgraphs, value_specs

Mode = Literal["custom-op", "standard-ops"]
MODES = ("custom-op", "standard-ops")


@dataclass(frozen=True)
class BlockInfo:
    """One exported Poly-NL block."""
    module: str
    layout: str
    channels: int
    inner_channels: int
    form: str
    """The function body's form: "unfolded", or "folded" from ``folded_from_positions`` positions on
    (unfolded below, decided per call)."""
    folded_from_positions: int | None = None


@dataclass
class ExportResult:
    path: Path
    mode: str
    opset: int
    blocks: list[BlockInfo] = field(default_factory=list)
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)


_MODULE_KEY = "polynl_deploy.module"
_INLINE_DOMAIN = "polynl.inline"


class PolyNLNode(nn.Module):
    """Stand-in for a block during export: emits one polynl::PolyNL node with folded weights."""

    def __init__(self, block: nn.Module, module_name: str) -> None:
        super().__init__()
        self.module_name = module_name
        for name, tensor in block.folded_weights().items():
            self.register_buffer(name, tensor)
        self.alpha = float(block.alpha.detach())
        self.layout = block.layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = tuple(getattr(self, name) for name in contract.INPUT_NAMES[1:])
        return torch.onnx.ops.symbolic(
            f"{contract.DOMAIN}::{contract.OP_TYPE}", (x, *weights),
            attrs={"alpha": self.alpha, "layout": self.layout,
                   "plugin_namespace": contract.PLUGIN_NAMESPACE, "plugin_version": contract.PLUGIN_VERSION},
            dtype=x.dtype, shape=x.shape, version=contract.OP_VERSION,
            metadata_props={_MODULE_KEY: self.module_name})


def replace_blocks(model: nn.Module) -> tuple[nn.Module, list[BlockInfo]]:
    """A copy of ``model`` with every Poly-NL block swapped for a PolyNLNode."""
    model = copy.deepcopy(model).eval()
    blocks: list[BlockInfo] = []

    def info(name: str, block: nn.Module) -> BlockInfo:
        if body_always_unfolded(block.layout, block.channels, block.inner_channels):
            return BlockInfo(name or "<root>", block.layout, block.channels, block.inner_channels, "unfolded")
        return BlockInfo(name or "<root>", block.layout, block.channels, block.inner_channels, "folded",
                         folded_min_positions(block.channels, block.inner_channels))

    if isinstance(model, POLYNL_BLOCKS):
        return PolyNLNode(model, "<root>"), [info("", model)]
    # Every place a block is used: one instance in several places (weight sharing) is one block whose
    # node is emitted at each call; named_modules() would list it once and leave the others traced as ops.
    nodes: dict[int, PolyNLNode] = {}
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if isinstance(module, POLYNL_BLOCKS):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            if id(module) not in nodes:
                nodes[id(module)] = PolyNLNode(module, name)
                blocks.append(info(name, module))
            setattr(parent, child, nodes[id(module)])
    return model, blocks


_AXIS_NAMES = {4: {0: "batch", 2: "height", 3: "width"}, 3: {0: "batch", 1: "tokens"}, 2: {0: "batch"}}


def dynamic_axes_for(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> list[dict[int, str]]:
    """The model's own ``onnx_dynamic_axes()`` where it has one (a model whose position table fixes H and
    W, say), else by rank: batch for all; H, W for 4-D maps; N for 3-D token sequences."""
    declared = getattr(model, "onnx_dynamic_axes", None)
    if callable(declared):
        return [dict(axes) for axes in declared()]
    return [dict(_AXIS_NAMES.get(t.dim(), {0: "batch"})) for t in example_inputs]


def check_opset(opset: int) -> None:
    """The default-domain opset must be one both torch.onnx and the onnx package can write."""
    highest = onnx.defs.onnx_opset_version()
    if not defaults.OPSET_MIN <= opset <= highest:
        raise ExportError(f"opset {opset} is not supported: export writes opsets {defaults.OPSET_MIN} to {highest} "
                          f"(default {defaults.OPSET})")


def _check_example_inputs(example_inputs) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    if not example_inputs or not all(isinstance(t, torch.Tensor) for t in example_inputs):
        raise ExportError("example_inputs must be a tensor or a non-empty tuple of tensors")
    return example_inputs


def _torch_export(model: nn.Module, inputs: tuple[torch.Tensor, ...], opset: int,
                  axes: list[dict[int, str]] | None) -> onnx.ModelProto:
    dynamic_shapes = None
    if axes is not None:
        dynamic_shapes = tuple({i: torch.export.Dim.AUTO for i in a} for a in axes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            logging.getLogger("torch.export").setLevel(logging.CRITICAL)  # failures are raised, not logged
            program = torch.onnx.export(model, inputs, dynamo=True, opset_version=opset,
                                        dynamic_shapes=dynamic_shapes, optimize=True, verbose=False,
                                        report=False)
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {exc}") from exc
    return program.model_proto


def _rename_dims(model: onnx.ModelProto, axes: list[dict[int, str]]) -> None:
    """Give symbolic dims readable names (batch, height, width, tokens) everywhere they appear."""
    mapping: dict[str, str] = {}
    for value, names in zip(model.graph.input, axes):
        for axis, name in names.items():
            dim = value.type.tensor_type.shape.dim[axis]
            if dim.dim_param and dim.dim_param not in mapping:
                mapping[dim.dim_param] = name if name not in mapping.values() else f"{name}_{len(mapping)}"
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in mapping:
                dim.dim_param = mapping[dim.dim_param]


def _name_polynl_nodes(model: onnx.ModelProto) -> None:
    """Name each PolyNL node after the module it replaces: ``PolyNL/<module path>``, with ``:<call>`` from the
    second call of a block used in several places on."""
    calls: collections.Counter = collections.Counter()
    for node in model.graph.node:
        if contract.is_polynl_node(node):
            module = next((p.value for p in node.metadata_props if p.key == _MODULE_KEY), None)
            if module:
                node.name = f"{contract.OP_TYPE}/{module}" + (f":{calls[module]}" if calls[module] else "")
                calls[module] += 1


def _name_outputs(model: onnx.ModelProto) -> None:
    """Name graph outputs ``output`` (or ``output_0``, ``output_1``, ...) instead of exporter temporaries."""
    outputs = model.graph.output
    names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    for value, new in zip(outputs, names):
        old = value.name
        if old == new or any(i.name == old for i in model.graph.input):
            continue
        for node in model.graph.node:
            node.output[:] = [new if o == old else o for o in node.output]
            node.input[:] = [new if i == old else i for i in node.input]
        for info in model.graph.value_info:
            if info.name == old:
                info.name = new
        value.name = new


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {i for n in nodes_with_subgraphs(model.graph) for i in n.input} | {o.name for o in model.graph.output}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def attach_function(model: onnx.ModelProto) -> None:
    """Add (or replace) the model-local PolyNL function matching the model's default opset."""
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    kept = [f for f in model.functions if not (f.domain == contract.DOMAIN and f.name == contract.OP_TYPE)]
    del model.functions[:]
    model.functions.extend([*kept, build_function(opset)])
    if not any(o.domain == contract.DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(contract.DOMAIN, contract.OP_VERSION))


def specialize_bodies(model: onnx.ModelProto, positions: Mapping[str, int] | None = None) -> onnx.ModelProto:
    """A copy whose PolyNL nodes call function bodies specialized for their layout and weights (domain
    ``polynl.inline``): no If left but the choice by N (``nn.functional.body_prefers_unfolded``), and that
    one only where N is dynamic and not given in ``positions`` (node name -> N). Both forms are exact:
    fixing one at a given N changes speed elsewhere, not the result."""
    model = copy.deepcopy(model)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    initializers = {t.name: t for t in model.graph.initializer}
    specialized: dict[str, onnx.FunctionProto] = {}
    for node in model.graph.node:
        if not contract.is_polynl_node(node):
            continue
        layout = next((a.s.decode() for a in node.attribute if a.name == "layout"), contract.LAYOUT_MAPS)
        wq = initializers.get(node.input[1])
        if wq is None:
            raise ExportError(f"node {node.name!r}: Wq is not an initializer; cannot pick the body form")
        channels, inner = wq.dims
        gram_blocks = body_gram_blocks(channels)
        if positions and node.name in positions:
            unfolded = body_prefers_unfolded(layout, channels, inner, positions[node.name])
        else:
            unfolded = True if body_always_unfolded(layout, channels, inner) else None
        form = {True: "unfolded", False: f"folded_gram{gram_blocks}", None: f"by_positions_gram{gram_blocks}"}
        name = f"{contract.OP_TYPE}_{layout}_{form[unfolded]}"
        if name not in specialized:
            specialized[name] = build_function(opset, layout, unfolded, name=name, domain=_INLINE_DOMAIN,
                                               gram_blocks=gram_blocks)
        node.op_type, node.domain = name, _INLINE_DOMAIN
        kept = [a for a in node.attribute if a.name in ("alpha", "layout")]
        del node.attribute[:]
        node.attribute.extend(kept)
    kept_functions = [f for f in model.functions if not (f.domain == contract.DOMAIN and f.name == contract.OP_TYPE)]
    del model.functions[:]
    model.functions.extend([*kept_functions, *specialized.values()])
    if specialized:
        model.opset_import.append(onnx.helper.make_opsetid(_INLINE_DOMAIN, 1))
    return model


def to_standard_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace every PolyNL node by its specialized body (``specialize_bodies``), inlined and optimized."""
    import onnxscript.optimizer
    from onnx.inliner import inline_local_functions

    model = specialize_bodies(model)
    # Branch outputs that are constants (a bias) cannot be deduplicated; the optimizer logs each one.
    logging.getLogger("onnx_ir.passes.common.initializer_deduplication").setLevel(logging.ERROR)
    optimized = onnxscript.optimizer.optimize(inline_local_functions(model))
    kept = [o for o in optimized.opset_import if o.domain not in (contract.DOMAIN, _INLINE_DOMAIN)]
    del optimized.opset_import[:]
    optimized.opset_import.extend(kept)
    _drop_unused_initializers(optimized)
    leftover = {n.domain for n in optimized.graph.node if n.domain not in ("", "ai.onnx")}
    if leftover:
        raise ExportError(f"standard-ops export still has nodes of domains {sorted(leftover)}")
    return optimized


def check_model(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """Full onnx checker plus strict shape inference; returns the model with inferred shapes."""
    register_schema()
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        onnx.checker.check_model(inferred, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{where}: exported model fails the ONNX checker: {exc}") from exc
    return inferred


def export_onnx(model: nn.Module, example_inputs, path, *, dynamic: bool = True, opset: int | None = None,
                mode: Mode = "custom-op", source: str | None = None) -> ExportResult:
    """Export ``model`` to ONNX at ``path``, each Poly-NL block as one polynl::PolyNL node.

    ``mode="custom-op"`` keeps the PolyNL nodes (with a model-local function body so any ONNX
    runtime can run them); ``mode="standard-ops"`` inlines them into default-domain ops.
    """
    if mode not in MODES:
        raise ExportError(f"mode must be one of {MODES}, got {mode!r}")
    opset = defaults.OPSET if opset is None else opset
    check_opset(opset)
    inputs = _check_example_inputs(example_inputs)
    register_schema()
    export_model, blocks = replace_blocks(model)
    axes = dynamic_axes_for(model, inputs) if dynamic else None
    proto = _torch_export(export_model, inputs, opset, axes)
    written = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if written != opset:
        raise ExportError(f"torch.onnx wrote opset {written} instead of the requested {opset}")
    if axes is not None:
        _rename_dims(proto, axes)
    _name_outputs(proto)
    _name_polynl_nodes(proto)
    if blocks:
        attach_function(proto)
    if mode == "standard-ops" and blocks:
        proto = to_standard_ops(proto)
    result = ExportResult(Path(path), mode, opset, blocks, value_specs(proto.graph.input),
                          value_specs(proto.graph.output))
    metadata = {
        "polynl_deploy.version": __version__,
        "polynl_deploy.source": source or f"{type(model).__module__}.{type(model).__qualname__}",
        "polynl_deploy.mode": mode,
        "polynl_deploy.opset": str(opset),
        "polynl_deploy.inputs": json.dumps(result.inputs),
        "polynl_deploy.example_shapes": json.dumps([list(t.shape) for t in inputs]),
        "polynl_deploy.outputs": json.dumps(result.outputs),
        "polynl_deploy.blocks": json.dumps([asdict(b) for b in blocks]),
    }
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **metadata})
    proto.producer_name, proto.producer_version = "polynl-deploy", __version__
    check_model(proto, str(path))
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    return result
