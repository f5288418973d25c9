"""fp16/bf16 conversion of exported files, checked with ONNX Runtime against eager PyTorch."""

import numpy as np
import onnx
import pytest
import torch

from fixture_models import TokenNet, TwoBlockNet, token_net, two_block_net
from polynl_deploy import defaults
from polynl_deploy.export.exporter import export_onnx, to_standard_ops
from polynl_deploy.tensorrt.precision import PRECISION_KEY, convert_onnx_file, convert_precision

FP16 = defaults.TOLERANCES["float16"]
MODELS = {"maps": (two_block_net, TwoBlockNet.default_input_shape),
          "tokens": (token_net, TokenNet.default_input_shape)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{(name, mode): (onnx path, example input, eager output)}."""
    folder = tmp_path_factory.mktemp("precision")
    files = {}
    for name, (factory, shape) in MODELS.items():
        model = factory()
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            expected = model(x).numpy()
        for mode in ("custom-op", "standard-ops"):
            path = folder / f"{name}_{mode}.onnx"
            export_onnx(model, x, path, mode=mode)
            files[name, mode] = (path, x.numpy(), expected)
    return files


def run_ort(model_or_path, x):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def assert_fp16_close(actual, expected):
    actual = actual.astype(np.float32)
    assert np.all(np.abs(actual - expected) <= FP16["atol"] + FP16["rtol"] * np.abs(expected)), \
        f"max abs error {np.abs(actual - expected).max():.3g}"


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("mode", ["custom-op", "standard-ops"])
@pytest.mark.parametrize("keep_io_fp32", [False, True])
def test_fp16_runs_in_onnxruntime_and_matches_eager(exported, tmp_path, name, mode, keep_io_fp32):
    path, x, expected = exported[name, mode]
    converted = convert_onnx_file(path, tmp_path / "fp16.onnx", "fp16", keep_io_fp32=keep_io_fp32)
    io_type = onnx.TensorProto.FLOAT if keep_io_fp32 else onnx.TensorProto.FLOAT16
    assert converted.graph.input[0].type.tensor_type.elem_type == io_type
    assert converted.graph.output[0].type.tensor_type.elem_type == io_type
    assert {p.key: p.value for p in converted.metadata_props}[PRECISION_KEY] == "fp16"
    actual = run_ort(tmp_path / "fp16.onnx", x if keep_io_fp32 else x.astype(np.float16))
    assert actual.dtype == (np.float32 if keep_io_fp32 else np.float16)
    assert_fp16_close(actual, expected)


@pytest.mark.parametrize("name", MODELS)
def test_fp16_then_inlined_keeps_float32_statistics(exported, name):
    """Converting the custom-op file before inlining keeps the body's Cast to float32 for the statistics."""
    path, x, expected = exported[name, "custom-op"]
    from polynl_deploy.onnx_file import load_onnx

    from polynl_deploy.onnx_file import nodes_with_subgraphs

    inlined = to_standard_ops(convert_precision(load_onnx(path), "fp16"))
    casts_to_float = [n for n in nodes_with_subgraphs(inlined.graph) if n.op_type == "Cast"
                      and n.attribute[0].i == onnx.TensorProto.FLOAT]
    assert len(casts_to_float) >= 2   # at least one per block (one per form where N decides), for X
    assert_fp16_close(run_ort(inlined, x.astype(np.float16)), expected)


def test_fp32_is_an_unchanged_copy(exported):
    from polynl_deploy.onnx_file import load_onnx

    model = load_onnx(exported["maps", "custom-op"][0])
    assert convert_precision(model, "fp32") == model


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("mode", ["custom-op", "standard-ops"])
def test_bf16_converts_types_keeps_float32_io_and_matches_eager(exported, tmp_path, name, mode):
    """ONNX Runtime's CPU provider has no bfloat16 Conv/MatMul, so onnx's ReferenceEvaluator runs the
    converted file (its bf16 MatMul accumulates in float32, as TensorRT does). bf16 keeps 8 significant
    bits, and every activation is rounded to it: the error follows the activations' scale, not each
    output's, so it is bounded by the bf16 rtol times the largest output (measured: about 1 %)."""
    from onnx.reference import ReferenceEvaluator

    path, x, expected = exported[name, mode]
    converted = convert_onnx_file(path, tmp_path / "bf16.onnx", "bf16", keep_io_fp32=True)
    types = {t.data_type for t in converted.graph.initializer}
    assert onnx.TensorProto.BFLOAT16 in types
    assert converted.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    casts = [n for n in converted.graph.node if n.op_type == "Cast"]
    assert casts[0].input[0] == converted.graph.input[0].name
    assert casts[0].attribute[0].i == onnx.TensorProto.BFLOAT16
    assert casts[-1].output[0] == converted.graph.output[0].name
    actual = ReferenceEvaluator(converted).run(None, {converted.graph.input[0].name: x})[0]
    assert actual.dtype == np.float32
    error = np.abs(actual - expected).max()
    assert error <= defaults.TOLERANCES["bfloat16"]["rtol"] * np.abs(expected).max(), \
        f"max abs error {error:.3g}, largest output {np.abs(expected).max():.3g}"


def test_unknown_precision_is_refused(exported):
    from polynl_deploy.errors import ExportError
    from polynl_deploy.onnx_file import load_onnx

    with pytest.raises(ExportError, match="fp32, fp16 or bf16"):
        convert_precision(load_onnx(exported["maps", "custom-op"][0]), "int8")


def test_keep_io_fp32_reaches_graph_inputs_read_inside_branches():
    """An If branch that reads a graph input directly must see the low-precision copy too (else the branch
    mixes float32 with float16 and ONNX Runtime refuses the model)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def branch(name, factor):
        node = helper.make_node("Mul", ["x", f"{name}_factor"], [f"{name}_out"])
        output = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [2])
        return helper.make_graph([node], name, [], [output],
                                 initializer=[helper.make_tensor(f"{name}_factor", TensorProto.FLOAT, [1], [factor])])

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
         helper.make_node("Greater", ["total", "zero"], ["positive"]),
         helper.make_node("If", ["positive"], ["y"], then_branch=branch("then", 2.0),
                          else_branch=branch("else", -3.0))],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    converted = convert_precision(model, "fp16", keep_io_fp32=True)
    assert [i.type.tensor_type.elem_type for i in converted.graph.input] == [TensorProto.FLOAT]
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    for x, factor in ((np.array([1.5, 2.0], np.float32), 2.0), (np.array([-1.5, 0.25], np.float32), -3.0)):
        np.testing.assert_allclose(session.run(None, {"x": x})[0], factor * x, rtol=1e-3)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_resize_scales_stay_float32(tmp_path, precision):
    """ONNX types Resize's scales as float32 only: converting them would fail the checker (and ONNX Runtime)."""
    upsample = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Upsample(scale_factor=2.0, mode="nearest")).eval()
    source = tmp_path / "up.onnx"
    torch.onnx.export(upsample, (torch.randn(1, 3, 5, 5),), str(source), dynamo=True, opset_version=20)
    scales = {n.input[2] for n in onnx.load(source).graph.node if n.op_type == "Resize" and len(n.input) > 2}
    assert scales, "the export has no Resize with scales"
    converted = convert_onnx_file(source, tmp_path / "up16.onnx", precision, keep_io_fp32=True)
    kept = {t.name: t.data_type for t in converted.graph.initializer if t.name in scales}
    kept.update({n.output[0]: n.attribute[0].t.data_type for n in converted.graph.node
                 if n.op_type == "Constant" and n.output[0] in scales})
    assert kept and set(kept.values()) == {onnx.TensorProto.FLOAT}, kept
    if precision == "fp16":
        x = np.random.default_rng(1).standard_normal((1, 3, 5, 5)).astype(np.float32)
        with torch.no_grad():
            expected = upsample(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(run_ort(tmp_path / "up16.onnx", x), expected, **FP16)
