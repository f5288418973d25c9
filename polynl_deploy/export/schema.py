"""onnx OpSchema for polynl::PolyNL, with type and shape inference, registered once per process."""

import onnx
from onnx import defs

from polynl_deploy import contract

_TYPES = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"]
_ATTR_TYPES = {"float": defs.OpSchema.AttrType.FLOAT, "string": defs.OpSchema.AttrType.STRING}


def _infer(ctx) -> None:
    """Y has the type and shape of X; weight ranks and channel counts are checked where known."""
    x_type = ctx.get_input_type(0)
    if x_type is None or not x_type.HasField("tensor_type"):
        return
    layout_attr = ctx.get_attribute("layout")
    layout = layout_attr.s.decode() if layout_attr is not None else contract.LAYOUT_MAPS
    if layout not in contract.LAYOUTS:
        raise onnx.shape_inference.InferenceError(
            f"[ShapeInferenceError] PolyNL: layout must be one of {contract.LAYOUTS}, got {layout!r}")
    shape = x_type.tensor_type.shape if x_type.tensor_type.HasField("shape") else None
    if shape is not None:
        rank = len(shape.dim)
        want = 4 if layout == contract.LAYOUT_MAPS else 3
        if rank != want:
            raise onnx.shape_inference.InferenceError(
                f"[ShapeInferenceError] PolyNL: X must have rank {want} for layout {layout!r}, got {rank}")
        channel_dim = shape.dim[1] if layout == contract.LAYOUT_MAPS else shape.dim[2]
        wq = ctx.get_input_type(1)
        if (channel_dim.HasField("dim_value") and wq is not None and wq.tensor_type.HasField("shape")
                and len(wq.tensor_type.shape.dim) == 2 and wq.tensor_type.shape.dim[0].HasField("dim_value")
                and wq.tensor_type.shape.dim[0].dim_value != channel_dim.dim_value):
            raise onnx.shape_inference.InferenceError(
                f"[ShapeInferenceError] PolyNL: Wq has {wq.tensor_type.shape.dim[0].dim_value} rows, "
                f"X has {channel_dim.dim_value} channels")
    ctx.set_output_type(0, x_type)


def _build_schema() -> defs.OpSchema:
    inputs = [defs.OpSchema.FormalParameter(i.name, "T", f"{i.doc}: {i.shape}") for i in contract.INPUTS]
    outputs = [defs.OpSchema.FormalParameter(contract.OUTPUT_NAMES[0], "T", "output, same shape as X")]
    attributes = []
    for a in contract.ATTRIBUTES:
        value = (onnx.helper.make_attribute(a.name, a.default))
        attributes.append(defs.OpSchema.Attribute(a.name, value, a.doc))
    schema = defs.OpSchema(
        contract.OP_TYPE, contract.DOMAIN, contract.OP_VERSION,
        "One whole Poly-NL block: Y = alpha*X + ((X Wq + bq) * mean_n((X Wk + bk)*(X Wv + bv))) Wo + bo.",
        inputs=inputs, outputs=outputs,
        type_constraints=[("T", _TYPES, "float tensors")],
        attributes=attributes,
    )
    schema.set_type_and_shape_inference_function(_infer)
    return schema


def register_schema() -> None:
    """Register the schema with onnx (idempotent), so the checker and shape inference know PolyNL."""
    if defs.has(contract.OP_TYPE, contract.OP_VERSION, contract.DOMAIN):
        return
    defs.register_schema(_build_schema())
