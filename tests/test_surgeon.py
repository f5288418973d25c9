"""Graph surgery: fuse plain torch.onnx exports of Poly-NL blocks into PolyNL nodes, decompose them back."""

import logging
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import fixture_models
from conftest import randomize
from polynl_cli.surgeon import surgeon_app
from polynl_deploy import contract, export_onnx
from polynl_deploy.errors import ModelFileError, PolyNLError
from polynl_deploy.nn import POLYNL_BLOCKS, NonLocal2d, PolyNL2d, PolyNLTokens
from polynl_deploy.surgeon import decompose_file, decompose_model, fuse_file, fuse_model

TOLERANCE = {"atol": 1e-5, "rtol": 1e-4}


def maps_net() -> nn.Module:
    """Two maps blocks: reduction 2 with BatchNorm (auto -> folded export), reduction 4 without (naive)."""
    return randomize(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), PolyNL2d(8), nn.ReLU(),
                                   PolyNL2d(8, reduction=4, norm=False)), seed=11)


def tokens_net() -> nn.Module:
    """Two token blocks: reduction 4 with BatchNorm (auto -> naive), reduction 2 without (folded)."""
    return randomize(nn.Sequential(PolyNLTokens(8, reduction=4, norm=True), nn.ReLU(), PolyNLTokens(8)), seed=12)


def naive_maps_block() -> nn.Module:
    return randomize(PolyNL2d(6, reduction=2, impl="naive"), seed=13)


def biasless_tokens_block() -> nn.Module:
    return randomize(PolyNLTokens(8, reduction=2, bias=False, norm=True, impl="naive"), seed=14)


def plain_export(model: nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    """What a user gets from torch.onnx.export alone: every dimension but the channels dynamic."""
    channel_axis = 1 if x.dim() == 4 else 2
    dynamic = ({axis: torch.export.Dim.AUTO for axis in range(x.dim()) if axis != channel_axis},)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=dynamic, verbose=False, report=False)
    return program.model_proto


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def polynl_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == contract.DOMAIN and n.op_type == contract.OP_TYPE]


CASES = {  # factory, export shape, another shape to run, the ops expected besides PolyNL after fuse
    "maps": (maps_net, (2, 3, 6, 7), (3, 3, 5, 9), ["Conv", "Relu"]),
    "tokens": (tokens_net, (2, 20, 8), (3, 27, 8), ["Relu"]),
    "naive-maps": (naive_maps_block, (2, 6, 4, 5), (1, 6, 7, 3), []),
    "biasless-tokens": (biasless_tokens_block, (2, 5, 8), (4, 11, 8), []),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    factory, export_shape, other_shape, other_ops = CASES[request.param]
    model = factory()
    plain = plain_export(model, torch.randn(*export_shape))
    fused, count = fuse_model(plain)
    return request.param, model, plain, fused, count, other_shape, other_ops


def blocks_of(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name or "<root>", m) for name, m in model.named_modules() if isinstance(m, POLYNL_BLOCKS)]


def test_cases_trace_both_forms_in_both_layouts():
    """torch.onnx.export traces the form each block computes at the export shape's N; the fuse
    pass must meet the naive and the folded subgraph of either layout."""
    traced = set()
    for factory, export_shape, _, _ in CASES.values():
        positions = int(np.prod(export_shape[2:])) if len(export_shape) == 4 else export_shape[1]
        traced |= {(block.layout, block.resolved_impl(positions)) for _, block in blocks_of(factory())}
    assert traced == {(layout, form) for layout in (contract.LAYOUT_MAPS, contract.LAYOUT_TOKENS)
                      for form in ("naive", "folded")}


def test_each_block_becomes_one_polynl_node(case):
    name, model, _, fused, count, _, other_ops = case
    blocks = blocks_of(model)
    nodes = polynl_nodes(fused)
    assert count == len(nodes) == len(blocks)
    assert [n.op_type for n in fused.graph.node if n not in nodes] == other_ops  # nothing of the blocks left
    if name != "biasless-tokens":  # without biases no initializer keeps the module's name
        assert [n.name for n in nodes] == [f"PolyNL/{module}" for module, _ in blocks]
    assert [f.name for f in fused.functions] == [contract.OP_TYPE]
    assert {o.domain: o.version for o in fused.opset_import}[contract.DOMAIN] == contract.OP_VERSION


def test_recovered_weights_are_the_folded_weights(case):
    _, model, _, fused, _, _, _ = case
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in fused.graph.initializer}
    for node, (_, block) in zip(polynl_nodes(fused), blocks_of(model)):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["layout"].decode() == block.layout
        assert attrs["alpha"] == pytest.approx(float(block.alpha.detach()), rel=1e-6)
        for key, value in zip(contract.INPUT_NAMES[1:], node.input[1:]):
            expected = block.folded_weights()[key].numpy()
            np.testing.assert_allclose(initializers[value], expected, rtol=1e-5, atol=1e-6, err_msg=key)


def test_fuse_and_decompose_keep_the_numbers(case):
    _, model, plain, fused, _, other_shape, _ = case
    decomposed, count = decompose_model(fused)
    assert count == len(polynl_nodes(fused))
    assert {n.domain for n in decomposed.graph.node} <= {"", "ai.onnx"}
    assert not decomposed.functions and all(o.domain in ("", "ai.onnx") for o in decomposed.opset_import)
    x = np.random.default_rng(0).standard_normal(other_shape).astype(np.float32)
    with torch.no_grad():
        eager = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ort_run(plain, x), eager, **TOLERANCE)
    np.testing.assert_allclose(ort_run(fused, x), ort_run(plain, x), **TOLERANCE)
    np.testing.assert_allclose(ort_run(decomposed, x), ort_run(fused, x), **TOLERANCE)


@pytest.mark.parametrize("impl", ["naive", "folded"])
@pytest.mark.parametrize("block_cls, shape", [(PolyNL2d, (2, 8, 4, 5)), (PolyNLTokens, (2, 7, 8))])
def test_float16_exports_fuse(block_cls, shape, impl):
    """fp16 exports: the folded form widens X to float32 for S and mu and narrows M and the shift
    (Cast nodes around it); the fused node takes its weights in X's dtype, as the op's inputs share one type."""
    model = randomize(block_cls(8, impl=impl), seed=17).half()
    plain = plain_export(model, torch.randn(*shape).half())
    fused, count = fuse_model(plain)
    nodes = polynl_nodes(fused)
    assert count == len(nodes) == 1
    initializers = {t.name: t for t in fused.graph.initializer}
    assert {initializers[name].data_type for name in nodes[0].input[1:]} == {onnx.TensorProto.FLOAT16}
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float16)
    with torch.no_grad():
        eager = model(torch.from_numpy(x)).float().numpy()
    scale = np.abs(eager).max()
    np.testing.assert_allclose(ort_run(fused, x).astype(np.float32), eager, atol=1e-2 * scale, rtol=1e-2)
    np.testing.assert_allclose(ort_run(fused, x).astype(np.float32), ort_run(plain, x).astype(np.float32),
                               atol=1e-2 * scale, rtol=1e-2)


@pytest.mark.parametrize("block_cls, shape", [(PolyNL2d, (2, 8, 4, 5)), (PolyNLTokens, (2, 7, 8))])
def test_static_exports_fuse_and_other_normalizations_do_not(block_cls, shape, monkeypatch):
    """The Gram matrix must be divided by N: a static export divides by the constant N and fuses; a
    variant normalized by N - 1 (dynamic) or by 2 N (static) is another layer and is left alone."""
    from polynl_deploy.nn import functional as F

    model = randomize(torch.nn.Sequential(torch.nn.ReLU(), block_cls(8, impl="folded")), seed=18)
    x = torch.randn(*shape)

    def static_export(model, x):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            return torch.onnx.export(model, (x,), dynamo=True, verbose=False, report=False).model_proto

    for export in (static_export, plain_export):
        fused, count = fuse_model(export(model, x))
        assert count == 1
    for divisor, export in ((lambda n: n - 1, plain_export), (lambda n: 2 * n, static_export)):
        def renormalized(x, wk, bk, wv, bv, channels_first=False):
            """F.gram_mean with the Gram matrix divided by divisor(N) instead of N."""
            if channels_first:
                gram, mu = x @ x.transpose(1, 2) / divisor(x.shape[2]), x.mean(dim=2)
            else:
                gram, mu = x.transpose(1, 2) @ x / divisor(x.shape[1]), x.mean(dim=1)
            return (wk * (gram @ wv)).sum(dim=1) + bk * (mu @ wv) + bv * (mu @ wk) + bk * bv

        monkeypatch.setattr(F, "gram_mean", renormalized)
        assert fuse_model(export(model, x))[1] == 0


def test_file_api(tmp_path):
    model = naive_maps_block()
    src, fused, decomposed = tmp_path / "plain.onnx", tmp_path / "fused.onnx", tmp_path / "std.onnx"
    onnx.save_model(plain_export(model, torch.randn(2, 6, 4, 5)), str(src))
    assert fuse_file(src, fused) == 1
    assert decompose_file(fused, decomposed) == 1
    assert len(polynl_nodes(onnx.load(str(fused)))) == 1 and not polynl_nodes(onnx.load(str(decomposed)))


def test_cli_commands(tmp_path):
    src = tmp_path / "plain.onnx"
    onnx.save_model(plain_export(naive_maps_block(), torch.randn(2, 6, 4, 5)), str(src))
    runner = CliRunner()

    def invoke(*args):
        result = runner.invoke(surgeon_app, [str(a) for a in args], env={"COLUMNS": "300"})
        return result, " ".join(result.output.split())

    result, output = invoke("fuse", src, "-o", tmp_path / "fused.onnx")
    assert result.exit_code == 0 and "fused 1 Poly-NL block(s)" in output
    result, output = invoke("decompose", tmp_path / "fused.onnx", "-o", tmp_path / "std.onnx")
    assert result.exit_code == 0 and "decomposed 1 PolyNL node(s)" in output
    assert "no Poly-NL block found" not in output
    result, output = invoke("fuse", tmp_path / "std.onnx", "-o", tmp_path / "refused.onnx")
    assert result.exit_code == 0 and "fused 0 Poly-NL block(s)" in output and "unchanged copy" in output
    result, _ = invoke("fuse", tmp_path / "missing.onnx", "-o", tmp_path / "out.onnx")
    assert isinstance(result.exception, ModelFileError)  # left for the main app's error handler


def test_decompose_an_exported_custom_op_file(tmp_path):
    model = fixture_models.token_net()
    exported, decomposed = tmp_path / "custom.onnx", tmp_path / "std.onnx"
    export_onnx(model, torch.randn(2, 9, 10), exported)
    assert decompose_file(exported, decomposed) == 2
    proto = onnx.load(str(decomposed))
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    assert {p.key for p in proto.metadata_props} >= {"polynl_deploy.version", "polynl_deploy.blocks"}
    x = np.random.default_rng(1).standard_normal((3, 7, 10)).astype(np.float32)
    np.testing.assert_allclose(ort_run(proto, x), ort_run(onnx.load(str(exported)), x), **TOLERANCE)


def non_local_net() -> nn.Module:
    """A residual block with 1x1 projections that is not a Poly-NL block."""
    return randomize(NonLocal2d(8), seed=15)


@pytest.mark.parametrize("factory, channels", [(fixture_models.plain_net, 3), (non_local_net, 8)],
                         ids=["conv", "non-local"])
def test_model_without_blocks_is_unchanged(tmp_path, factory, channels):
    src, dst = tmp_path / "plain.onnx", tmp_path / "out.onnx"
    plain = plain_export(factory(), torch.randn(1, channels, 8, 8))
    onnx.save_model(plain, str(src))
    assert fuse_file(src, dst) == 0
    assert onnx.load(str(dst)).graph == onnx.load(str(src)).graph
    assert decompose_file(src, dst) == 0


@pytest.mark.parametrize("content", [b"", b"not an onnx model at all"])
def test_bad_file_is_a_clear_error(tmp_path, content):
    src, dst = tmp_path / "bad.onnx", tmp_path / "out.onnx"
    src.write_bytes(content)
    for rewrite in (fuse_file, decompose_file):
        with pytest.raises(ModelFileError, match="bad.onnx"):
            rewrite(src, dst)
    with pytest.raises(PolyNLError, match="no such file"):
        fuse_file(tmp_path / "missing.onnx", dst)
    assert not dst.exists()
