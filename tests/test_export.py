"""export_onnx: custom-op and standard-ops files, checked by ONNX Runtime, onnx's reference runtime and checker."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx.reference import ReferenceEvaluator

import fixture_models
from conftest import randomize
from polynl_deploy import contract, defaults, export_onnx
from polynl_deploy.errors import ExportError
from polynl_deploy.export.function_body import build_function
from polynl_deploy.export.schema import register_schema
from polynl_deploy.nn import PolyNL2d, PolyNLTokens
from polynl_deploy.nn import functional as F
from polynl_deploy.onnx_file import nodes_with_subgraphs


def ort_run(path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def eager(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def polynl_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == contract.DOMAIN and n.op_type == contract.OP_TYPE]


@pytest.fixture(scope="module")
def two_block(tmp_path_factory):
    model = fixture_models.two_block_net()
    path = tmp_path_factory.mktemp("export") / "two_block.onnx"
    result = export_onnx(model, torch.randn(*model.default_input_shape), path)
    return model, path, result


def test_each_block_is_one_custom_node(two_block):
    _, path, result = two_block
    proto = onnx.load(str(path))
    nodes = polynl_nodes(proto)
    assert [n.name for n in nodes] == ["PolyNL/block1", "PolyNL/block2"]
    assert [b.form for b in result.blocks] == ["folded", "unfolded"]
    for node in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["layout"] == b"maps"
        assert attrs["plugin_namespace"] == contract.PLUGIN_NAMESPACE.encode()
        assert attrs["plugin_version"] == contract.PLUGIN_VERSION.encode()
        assert isinstance(attrs["alpha"], float)
        assert len(node.input) == len(contract.INPUT_NAMES)
    # the stems, casts etc. never absorb the block: no MatMul/ReduceMean outside the function
    assert not {"MatMul", "ReduceMean", "Einsum"} & {n.op_type for n in proto.graph.node}
    assert [f"{f.domain}::{f.name}" for f in proto.functions] == ["polynl::PolyNL"]
    assert {o.domain: o.version for o in proto.opset_import}[contract.DOMAIN] == contract.OP_VERSION


def test_weights_are_folded_with_expected_shapes(two_block):
    model, path, _ = two_block
    proto = onnx.load(str(path))
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    node = polynl_nodes(proto)[0]
    shapes = {name: initializers[value].shape for name, value in zip(contract.INPUT_NAMES[1:], node.input[1:])}
    assert shapes == {"Wq": (12, 6), "bq": (6,), "Wk": (12, 6), "bk": (6,), "Wv": (12, 6), "bv": (6,),
                      "Wo": (6, 12), "bo": (12,)}
    # Independently of folded_weights: beta and the eval-mode BatchNorm after the output 1x1 conv.
    block = model.block1
    conv_w = block.out.weight.detach().double().numpy()[:, :, 0, 0]          # (C, C')
    conv_b = block.out.bias.detach().double().numpy()
    norm = block.norm
    scale = norm.weight.detach().double().numpy() / np.sqrt(norm.running_var.double().numpy() + norm.eps)
    shift = norm.bias.detach().double().numpy() - norm.running_mean.double().numpy() * scale
    beta = float(block.beta.detach())
    np.testing.assert_allclose(initializers[node.input[7]], beta * conv_w.T * scale, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(initializers[node.input[8]], beta * (conv_b * scale + shift), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(2, 3, 10, 14), (1, 3, 7, 5), (4, 3, 16, 9), (3, 3, 1, 1)])
def test_ort_matches_eager_at_other_shapes(two_block, shape):
    model, path, _ = two_block
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(ort_run(path, x), eager(model, x), atol=1e-5, rtol=1e-4)


def test_metadata_and_dynamic_axes(two_block):
    _, path, _ = two_block
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["polynl_deploy.mode"] == "custom-op"
    assert meta["polynl_deploy.opset"] == "20"
    assert json.loads(meta["polynl_deploy.example_shapes"]) == [[2, 3, 10, 14]]
    assert json.loads(meta["polynl_deploy.inputs"])[0]["shape"] == ["batch", 3, "height", "width"]
    assert json.loads(meta["polynl_deploy.outputs"])[0]["shape"] == ["batch", 4, "height", "width"]
    assert len(json.loads(meta["polynl_deploy.blocks"])) == 2


def test_full_checker_and_shape_inference_know_polynl(two_block):
    _, path, _ = two_block
    register_schema()
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in inferred.graph.value_info}
    node = polynl_nodes(inferred)[0]
    assert shapes[node.output[0]] == ["batch", 12, "height", "width"]


def test_schema_inference_rejects_inconsistent_nodes():
    register_schema()
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 4, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    weights = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in
               zip(contract.INPUT_NAMES[1:], [[6, 3], [3], [6, 3], [3], [6, 3], [3], [3, 6], [6]])]
    node = onnx.helper.make_node("PolyNL", ["x"] + [w.name for w in weights], ["y"],
                                 domain="polynl", layout="maps")
    graph = onnx.helper.make_graph([node], "g", [x, *weights], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 20),
                                                         onnx.helper.make_opsetid("polynl", 1)])
    with pytest.raises(onnx.shape_inference.InferenceError, match="Wq has 6 rows, X has 8 channels"):
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
    model.graph.node[0].attribute[0].s = b"tokens"
    with pytest.raises(onnx.shape_inference.InferenceError, match="rank 3"):
        onnx.shape_inference.infer_shapes(model, strict_mode=True)


def test_function_body_alone_reproduces_eager(two_block):
    """onnx's reference runtime has no PolyNL kernel: it can only execute the model-local function."""
    model, path, _ = two_block
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 5)).astype(np.float32)
    (y,) = ReferenceEvaluator(str(path)).run(None, {"x": x})
    np.testing.assert_allclose(y, eager(model, x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dynamic", [True, False])
def test_standard_ops_mode_has_no_custom_domain(tmp_path, dynamic):
    model = fixture_models.two_block_net()
    path = tmp_path / "std.onnx"
    result = export_onnx(model, torch.randn(2, 3, 10, 14), path, mode="standard-ops", dynamic=dynamic)
    proto = onnx.load(str(path))
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    assert all(o.domain in ("", "ai.onnx") for o in proto.opset_import)
    assert not proto.functions
    # Constant branches are folded at export: what is left is the form's If on a dynamic N, one per
    # block that is not unfolded at every N.
    per_call = sum(b.form == "folded" for b in result.blocks) if dynamic else 0
    assert [n.op_type for n in proto.graph.node].count("If") == per_call
    onnx.checker.check_model(proto, full_check=True)
    shape = (3, 3, 9, 11) if dynamic else (2, 3, 10, 14)
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(ort_run(path, x), eager(model, x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("net, shape", [(fixture_models.two_block_net, None), (fixture_models.token_net, (2, 9, 10))])
def test_onnx_runtime_loads_exports_without_warnings(tmp_path, capfd, net, shape):
    """Users open our files with their own sessions, at the default log level (warnings shown)."""
    model = net()
    path = tmp_path / "model.onnx"
    export_onnx(model, torch.randn(*(shape or model.default_input_shape)), path)
    capfd.readouterr()
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logged = capfd.readouterr().err
    assert "[W:" not in logged and "[E:" not in logged, logged


@pytest.mark.parametrize("mode", ["custom-op", "standard-ops"])
def test_tokens_model(tmp_path, mode):
    model = fixture_models.token_net()
    path = tmp_path / "tokens.onnx"
    result = export_onnx(model, torch.randn(2, 9, 10), path, mode=mode)
    assert [(b.layout, b.form) for b in result.blocks] == [("tokens", "folded"), ("tokens", "unfolded")]
    for shape in [(2, 9, 10), (1, 31, 10), (5, 2, 10)]:
        x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(ort_run(path, x), eager(model, x), atol=1e-5, rtol=1e-4)


def test_block_as_the_whole_model_and_nested_blocks(tmp_path):
    block = randomize(PolyNL2d(9, reduction=3), seed=4)
    path = tmp_path / "root.onnx"
    result = export_onnx(block, torch.randn(1, 9, 4, 6), path)
    assert [b.module for b in result.blocks] == ["<root>"]
    x = np.random.default_rng(5).standard_normal((2, 9, 3, 8)).astype(np.float32)
    np.testing.assert_allclose(ort_run(path, x), eager(block, x), atol=1e-5, rtol=1e-4)

    nested = randomize(torch.nn.Sequential(torch.nn.Sequential(PolyNLTokens(6), PolyNLTokens(6))), seed=6)
    result = export_onnx(nested, torch.randn(2, 5, 6), tmp_path / "nested.onnx")
    assert [b.module for b in result.blocks] == ["0.0", "0.1"]


@pytest.mark.parametrize("mode", ["custom-op", "standard-ops"])
def test_block_used_in_several_places_is_a_node_at_each_call(tmp_path, mode):
    """Weight sharing: one instance in two places is one block with one set of weights, and a PolyNL
    node (uniquely named) at each call; before, the second call was traced as plain ops."""
    block = randomize(PolyNL2d(8), seed=7)
    shared = torch.nn.Sequential(block, torch.nn.ReLU(), block, torch.nn.Sequential(block)).eval()
    path = tmp_path / "shared.onnx"
    result = export_onnx(shared, torch.randn(1, 8, 4, 4), path, mode=mode)
    assert [b.module for b in result.blocks] == ["0"]
    proto = onnx.load(str(path))
    nodes = [n for n in proto.graph.node if n.op_type == contract.OP_TYPE]
    if mode == "custom-op":
        assert [n.name for n in nodes] == ["PolyNL/0", "PolyNL/0:1", "PolyNL/0:2"]
        assert len({tuple(n.input[1:]) for n in nodes}) == 1  # one set of weights
        assert {n.op_type for n in proto.graph.node} == {contract.OP_TYPE, "Relu"}
    else:
        assert not nodes
    x = np.random.default_rng(8).standard_normal((2, 8, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(ort_run(path, x), eager(shared, x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("positions, form", [(4, "unfolded"), (4096, "folded_gram1")])
def test_bodies_specialized_at_given_positions_have_no_if_and_stay_exact(tmp_path, positions, form):
    """``specialize_bodies`` with N given (as TensorRT-RTX builds do at the profile's opt shape) fixes the
    form, so no If is left; either exact form reproduces eager at every other N."""
    from polynl_deploy.export.exporter import specialize_bodies

    block = randomize(PolyNL2d(8), seed=9)
    path = tmp_path / "block.onnx"
    export_onnx(block, torch.randn(1, 8, 6, 6), path)
    proto = onnx.load(str(path))
    (node,) = polynl_nodes(proto)
    specialized = specialize_bodies(proto, {node.name: positions})
    (called,) = [n for n in specialized.graph.node if n.domain != ""]
    assert called.op_type == f"PolyNL_maps_{form}" and [f.name for f in specialized.functions] == [called.op_type]
    assert {a.name for a in called.attribute} == {"alpha", "layout"}
    assert not [n for f in specialized.functions for n in f.node if n.op_type == "If"]
    by_positions = specialize_bodies(proto)
    assert [n.op_type for f in by_positions.functions for n in f.node if n.op_type == "If"] == ["If"]
    onnx.save_model(specialized, str(tmp_path / "specialized.onnx"))
    for shape in [(2, 8, 1, 3), (1, 8, 40, 30)]:
        x = np.random.default_rng(10).standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(ort_run(tmp_path / "specialized.onnx", x), eager(block, x), atol=1e-5, rtol=1e-4)


def test_static_export_fixes_shapes(tmp_path):
    model = fixture_models.two_block_net()
    path = tmp_path / "static.onnx"
    export_onnx(model, torch.randn(2, 3, 10, 14), path, dynamic=False)
    dims = [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 10, 14]
    x = np.random.default_rng(7).standard_normal((2, 3, 10, 14)).astype(np.float32)
    np.testing.assert_allclose(ort_run(path, x), eager(model, x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("channels, blocks", [(2, 2), (5, 2), (9, 2), (16, 2), (3, 4), (9, 4), (13, 4), (16, 4),
                                             (7, 3), (17, 8)])
def test_block_triangle_gram_body_matches_eager(tmp_path, channels, blocks):
    """X X^T from the upper block triangle, for C with and without remainder and C < blocks (empty
    blocks); forced below the thresholds."""
    block = randomize(PolyNL2d(channels, norm=False), seed=channels)
    assert not F.prefers_unfolded(block.channels, block.inner_channels)
    path = tmp_path / "block.onnx"
    export_onnx(block, torch.randn(2, channels, 5, 6), path)
    proto = onnx.load(str(path))
    del proto.functions[:]
    proto.functions.append(build_function(defaults.OPSET, contract.LAYOUT_MAPS, False, gram_blocks=blocks))
    onnx.save(proto, str(path))
    x = np.random.default_rng(channels).standard_normal((3, channels, 4, 7)).astype(np.float32)
    np.testing.assert_allclose(ort_run(path, x), eager(block, x), atol=1e-5, rtol=1e-4)
    (y,) = ReferenceEvaluator(str(path)).run(None, {"x": x})
    np.testing.assert_allclose(y, eager(block, x), atol=1e-5, rtol=1e-4)


def test_gram_blocks_by_width():
    tiers = sorted(defaults.BODY_GRAM_BLOCKS)
    assert F.body_gram_blocks(tiers[0][0] - 1) == 1
    for (min_channels, blocks), (next_min, _) in zip(tiers, tiers[1:] + [(None, None)]):
        assert F.body_gram_blocks(min_channels) == blocks
        if next_min is not None:
            assert F.body_gram_blocks(next_min - 1) == blocks


GRAM_TIER_EDGES = sorted({c for min_channels, _ in defaults.BODY_GRAM_BLOCKS
                          for c in (min_channels - 1, min_channels)})


@pytest.mark.parametrize("mode", ["custom-op", "standard-ops"])
@pytest.mark.parametrize("channels", GRAM_TIER_EDGES)
def test_gram_form_either_side_of_each_tier_matches_eager(tmp_path, mode, channels):
    block = randomize(PolyNL2d(channels), seed=3)
    path = tmp_path / "block.onnx"
    export_onnx(block, torch.randn(1, channels, 6, 6), path, mode=mode)
    if mode == "standard-ops":  # the inlined body splits X into the tier's blocks (in the form's If)
        splits = [len(n.output) for n in nodes_with_subgraphs(onnx.load(str(path)).graph) if n.op_type == "Split"]
        blocks = F.body_gram_blocks(channels)
        assert splits == ([blocks] if blocks > 1 else [])
    x = np.random.default_rng(3).standard_normal((2, channels, 5, 9)).astype(np.float32)
    with torch.no_grad():
        reference = block.double()(torch.from_numpy(x).double()).numpy()
    # outputs reach ~100 here: compare with float64 eager within a few float32 ulps of that scale
    np.testing.assert_allclose(ort_run(path, x), reference, atol=1e-6 * np.abs(reference).max(), rtol=1e-4)


@pytest.mark.parametrize("block,shape", [(PolyNL2d(8), (2, 8, 5, 6)), (PolyNLTokens(8, reduction=4), (2, 5, 8))])
def test_static_single_block_runs_on_ort(tmp_path, block, shape):
    """ORT checks the shapes of the untaken If branch too: both branches must fit any static shape."""
    block = randomize(block, seed=8)
    path = tmp_path / "static_block.onnx"
    export_onnx(block, torch.randn(*shape), path, dynamic=False)
    x = np.random.default_rng(8).standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(ort_run(path, x), eager(block, x), atol=1e-5, rtol=1e-4)


def test_model_without_blocks_exports(tmp_path):
    result = export_onnx(fixture_models.plain_net(), torch.randn(1, 3, 8, 8), tmp_path / "plain.onnx")
    proto = onnx.load(str(tmp_path / "plain.onnx"))
    assert result.blocks == [] and not proto.functions and not polynl_nodes(proto)


def test_failed_export_leaves_nothing(tmp_path):
    path = tmp_path / "out.onnx"
    with pytest.raises(ExportError, match="TwoBlockNet"):
        export_onnx(fixture_models.two_block_net(), torch.randn(2, 5, 10, 14), path)  # 5 != 3 channels
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ExportError, match="mode"):
        export_onnx(fixture_models.plain_net(), torch.randn(1, 3, 8, 8), path, mode="fast")
    with pytest.raises(ExportError, match="example_inputs"):
        export_onnx(fixture_models.plain_net(), [], path)


def test_body_form_by_layout_and_width():
    from polynl_deploy.nn import functional as F

    assert [F.body_prefers_unfolded(layout, c, r) for layout, c, r in
            (("tokens", 256, 128), ("tokens", 255, 128), ("maps", 1024, 512), ("maps", 256, 64), ("tokens", 64, 32))] \
        == [True, False, False, True, False]


@pytest.mark.parametrize("mode", ["custom-op", "standard-ops"])
@pytest.mark.parametrize("block, shape, form", [(PolyNLTokens(256), (2, 40, 256), "unfolded"),
                                                (PolyNL2d(256, norm=False), (1, 256, 6, 5), "folded")])
def test_wide_token_blocks_export_the_unfolded_body(tmp_path, mode, block, shape, form):
    block = randomize(block, seed=9)
    path = tmp_path / "wide.onnx"
    result = export_onnx(block, torch.randn(*shape), path, mode=mode)
    assert [b.form for b in result.blocks] == [form]
    if mode == "standard-ops":  # only the folded form reduces Wk * (S Wv) with ReduceSum
        op_types = {n.op_type for n in nodes_with_subgraphs(onnx.load(str(path)).graph)}
        assert ("ReduceSum" in op_types) == (form == "folded")
    for scale in (1, 3):
        x = np.random.default_rng(10).standard_normal((shape[0], shape[1] * scale, *shape[2:]) if len(shape) == 3
                                                      else shape).astype(np.float32)
        expected = eager(block, x)  # |Y| reaches ~600 here: float32 round-off scales with it
        np.testing.assert_allclose(ort_run(path, x), expected, atol=1e-5 * np.abs(expected).max(), rtol=1e-4)


def _condition_model(layout: str) -> onnx.ModelProto:
    """X and Wq in, the body's unfolded_condition out."""
    from onnx import TensorProto, helper

    from polynl_deploy.export.function_body import _Block, unfolded_condition

    b = _Block("")
    channels, inner = b.op("Shape", "Wq", start=0, end=1), b.op("Shape", "Wq", start=1, end=2)
    b.nodes.append(helper.make_node("Identity", [unfolded_condition(b, layout, "X", channels, inner)], ["unfolded"]))
    rank = 4 if layout == contract.LAYOUT_MAPS else 3
    graph = helper.make_graph(b.nodes, "condition",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [f"d{i}" for i in range(rank)]),
                               helper.make_tensor_value_info("Wq", TensorProto.FLOAT, ["C", "Ci"])],
                              [helper.make_tensor_value_info("unfolded", TensorProto.BOOL, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", defaults.OPSET)])


@pytest.mark.parametrize("layout", contract.LAYOUTS)
def test_body_condition_matches_the_python_rule(layout):
    """The If condition of the exported body against nn.functional.body_prefers_unfolded, on both sides
    of every threshold (C'/C, wide tokens, and the N below which the folded form costs more)."""
    session = ort.InferenceSession(_condition_model(layout).SerializeToString(), providers=["CPUExecutionProvider"])
    checked = 0
    for channels in (4, 9, 64, 255, 256, 1024):
        for inner in sorted({1, channels // 4, channels // 4 + 1, channels // 3, channels // 2, channels} - {0}):
            edge = F.folded_min_positions(channels, inner)
            for positions in sorted({1, 7, 4096} | ({edge - 1, edge} - {0} if edge else set())):
                # zero batch: only the shape matters
                shape = (0, channels, 1, positions) if layout == contract.LAYOUT_MAPS else (0, positions, channels)
                (got,) = session.run(None, {"X": np.zeros(shape, np.float32),
                                            "Wq": np.zeros((channels, inner), np.float32)})
                assert bool(got[0]) == F.body_prefers_unfolded(layout, channels, inner, positions), \
                    (layout, channels, inner, positions)
                checked += 1
    assert checked > 100


@pytest.mark.parametrize("mode", ["custom-op", "standard-ops"])
@pytest.mark.parametrize("block, shapes", [
    (PolyNL2d(64, norm=False), [(2, 64, 8, 8), (2, 64, 11, 12), (1, 64, 16, 16)]),  # N = 64, 132 > 128
    (PolyNLTokens(64), [(2, 100, 64), (2, 127, 64), (3, 128, 64), (1, 300, 64)])])  # edge at N = 128
def test_form_by_positions_either_side_of_its_edge_matches_eager(tmp_path, mode, block, shapes):
    """The body decides the form per call from N (dynamic axes): both forms run in one file."""
    block = randomize(block, seed=11)
    assert F.folded_min_positions(block.channels, block.inner_channels) == 128
    path = tmp_path / "block.onnx"
    result = export_onnx(block, torch.randn(*shapes[-1]), path, mode=mode)
    assert [(b.form, b.folded_from_positions) for b in result.blocks] == [("folded", 128)]
    for shape in shapes:
        x = np.random.default_rng(11).standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(ort_run(path, x), eager(block, x), atol=1e-5, rtol=1e-4)
        if mode == "custom-op":
            (y,) = ReferenceEvaluator(str(path)).run(None, {"x": x})
            np.testing.assert_allclose(y, eager(block, x), atol=1e-5, rtol=1e-4)
