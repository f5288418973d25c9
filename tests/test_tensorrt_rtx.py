"""TensorRT for RTX on this machine (no GPU): ahead-of-time engine builds and the parser's PolyNL mapping."""

import json
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
import torch

from fixture_models import TokenNet, TwoBlockNet, token_net, two_block_net
from polynl_deploy import contract
from polynl_deploy.defaults import BODY_GRAM_BLOCKS
from polynl_deploy.errors import ModelFileError
from polynl_deploy.export.exporter import export_onnx
from polynl_deploy.io import sha256_of
from polynl_deploy.nn import PolyNL2d
from polynl_deploy.tensorrt.builder import GRAPH_FUNCTION_BODY, build_engine
from polynl_deploy.tensorrt.settings import BuildSettings, ShapeOverride

pytestmark = pytest.mark.tensorrt_rtx


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rtx")
    paths = {}
    for name, factory, shape in (("maps", two_block_net, TwoBlockNet.default_input_shape),
                                 ("tokens", token_net, TokenNet.default_input_shape)):
        paths[name] = folder / f"{name}.onnx"
        export_onnx(factory(), torch.randn(*shape), paths[name])
    # one block wide enough for the body's widest Gram tier (the most channel blocks)
    paths["wide_maps"] = folder / "wide_maps.onnx"
    wide = max(min_channels for min_channels, _ in BODY_GRAM_BLOCKS)
    export_onnx(PolyNL2d(wide).eval(), torch.randn(1, wide, 8, 8), paths["wide_maps"])
    return paths


def rtx_build(onnx_path, plan_path, **kwargs):
    started = time.perf_counter()
    result = build_engine(BuildSettings(onnx_path, plan_path, target="rtx", show_progress=False, **kwargs))
    print(f"{plan_path.name}: {result.engine_bytes} bytes, build {result.build_seconds:.2f} s, "
          f"total {time.perf_counter() - started:.2f} s")
    return result


@pytest.mark.parametrize("name, sms", [("maps", (89,)), ("tokens", (89, 120))])
def test_rtx_builds_custom_op_file_for_sms(exported, tmp_path, name, sms):
    plan = tmp_path / f"{name}.plan"
    result = rtx_build(exported[name], plan, sms=sms)
    assert plan.stat().st_size == result.engine_bytes > 100_000
    sidecar = json.loads(result.sidecar_path.read_text())
    assert sidecar == result.metadata
    import tensorrt_rtx_bindings as trt
    assert sidecar["tensorrt_version"] == trt.__version__
    assert sidecar["compute_capabilities"] == [f"SM{sm}" for sm in sms]
    assert sidecar["graph"] == GRAPH_FUNCTION_BODY and sidecar["polynl_nodes"] == 2
    assert sidecar["onnx_sha256"] == sha256_of(exported[name])
    assert sidecar["plugin_library"] is None and sidecar["precision"] == "fp32" and sidecar["tf32"] is False
    assert sidecar["profiles"][0]["input"] == "x" and sidecar["profiles"][0]["min"][0] == 1


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_rtx_builds_reduced_precision(exported, tmp_path, precision):
    result = rtx_build(exported["maps"], tmp_path / f"{precision}.plan", precision=precision, keep_io_fp32=True,
                       shape_overrides={"x": ShapeOverride(max=(4, 3, 64, 64))})
    assert result.metadata["precision"] == precision
    assert result.metadata["profiles"][0]["max"] == [4, 3, 64, 64]


def test_rtx_builds_with_progress_bar(exported, tmp_path):
    result = build_engine(BuildSettings(exported["tokens"], tmp_path / "t.plan", target="rtx", sms=(86,)))
    assert result.engine_bytes > 0


def test_rtx_builds_the_block_triangle_gram_body(exported, tmp_path):
    result = rtx_build(exported["wide_maps"], tmp_path / "wide.plan", sms=(89,))
    assert result.engine_bytes > 100_000 and result.metadata["polynl_nodes"] == 1


@pytest.mark.parametrize("layout", ["maps", "tokens", "wide_maps"])
def test_rtx_parser_imports_the_function_body(exported, layout):
    """Without a registered plugin creator the parser imports each PolyNL node's function body."""
    import tensorrt_rtx_bindings as trt

    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(exported[layout])), [parser.get_error(i).desc()
                                                          for i in range(parser.num_errors)]
    layer_types = {network.get_layer(i).type for i in range(network.num_layers)}
    assert trt.LayerType.MATRIX_MULTIPLY in layer_types
    assert trt.LayerType.PLUGIN_V3 not in layer_types


def test_parser_errors_name_the_node(tmp_path):
    """A graph RTX cannot parse: the error says which node."""
    from onnx import TensorProto, helper

    node = helper.make_node("Unique", ["x"], ["y"], name="my_unique_node")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m"])])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), path)
    with pytest.raises(ModelFileError, match="my_unique_node"):
        build_engine(BuildSettings(path, tmp_path / "bad.plan", target="rtx", show_progress=False,
                                   shape_overrides={"x": ShapeOverride((1,), (4,), (8,))}))
    assert not (tmp_path / "bad.plan").exists()


PROBE = r'''
import json, sys
import numpy as np
import tensorrt_rtx_bindings as trt

def report(**payload):
    print("PROBE " + json.dumps(payload), flush=True)

def field_value(field):
    data = np.asarray(field.data)
    if field.type == trt.PluginFieldType.CHAR:
        return bytes(data.astype(np.uint8)).rstrip(b"\0").decode()
    return data.tolist()

class Creator(trt.IPluginCreatorV3One):
    def __init__(self, namespace, version, fields):
        trt.IPluginCreatorV3One.__init__(self)
        self.name, self.plugin_namespace, self.plugin_version = "PolyNL", namespace, version
        self.field_names = trt.PluginFieldCollection(fields)

    def create_plugin(self, name, fc, phase):
        report(creator=[self.name, self.plugin_namespace, self.plugin_version], node=name,
               fields={f.name: [str(f.type).split(".")[-1], field_value(f)] for f in fc})
        return None  # no plugin layer in TensorRT for RTX: the parse fails (or the process aborts)

CONTRACT = json.loads(sys.argv[2])
types = {"float": (np.float32, trt.PluginFieldType.FLOAT32), "string": (np.int8, trt.PluginFieldType.CHAR)}
fields = [trt.PluginField(a["name"], np.array([], dtype=types[a["type"]][0]), types[a["type"]][1])
          for a in CONTRACT["attributes"]]
registry = trt.get_plugin_registry()
creators = [Creator(namespace, version, fields)  # kept alive: the registry does not own Python creators
            for namespace, version in [(CONTRACT["namespace"], CONTRACT["version"]), ("", CONTRACT["version"]),
                                       (CONTRACT["namespace"], "99")]]
for creator in creators:
    registry.register_creator(creator, creator.plugin_namespace)
logger = trt.Logger(trt.Logger.INTERNAL_ERROR)
builder = trt.Builder(logger)
network = builder.create_network(0)  # builder and network must outlive the parse
parser = trt.OnnxParser(network, logger)
parser.set_flag(trt.OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE)
report(parsed=parser.parse_from_file(sys.argv[1]))
'''


@pytest.mark.parametrize("name", ["maps", "tokens"])
def test_parser_maps_polynl_nodes_onto_the_plugin_contract(exported, name):
    """A Python creator registered under the contract's name/namespace/version (plus two decoys) receives
    every PolyNL node with each contract field typed and valued as in the ONNX node."""
    contract_json = json.dumps({"namespace": contract.PLUGIN_NAMESPACE, "version": contract.PLUGIN_VERSION,
                                "attributes": [{"name": a.name, "type": a.type} for a in contract.ATTRIBUTES]})
    run = subprocess.run([sys.executable, "-c", PROBE, str(exported[name]), contract_json],
                         capture_output=True, text=True, timeout=120)
    # exit code 0 (parse failed cleanly) or a signal/abort once the parser gets no plugin: both tolerated
    reports = [json.loads(line[6:]) for line in run.stdout.splitlines() if line.startswith("PROBE ")]
    calls = [r for r in reports if "creator" in r]
    assert calls, f"no creator call (rc {run.returncode}):\n{run.stdout}\n{run.stderr[-2000:]}"
    assert all(c["creator"][1:] == [contract.PLUGIN_NAMESPACE, contract.PLUGIN_VERSION] for c in calls), \
        "a decoy creator (other namespace or version) was called"
    model = onnx.load(str(exported[name]))
    nodes = {n.name: n for n in model.graph.node if n.op_type == contract.OP_TYPE}
    first = calls[0]
    assert first["creator"] == [contract.OP_TYPE, contract.PLUGIN_NAMESPACE, contract.PLUGIN_VERSION]
    assert first["node"] in nodes
    expected = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[first["node"]].attribute}
    assert set(first["fields"]) == set(contract.ATTRIBUTE_NAMES)
    for attribute in contract.ATTRIBUTES:
        kind, value = first["fields"][attribute.name]
        if attribute.type == "float":
            assert kind == "FLOAT32" and value == pytest.approx([expected[attribute.name]], rel=1e-6)
        else:
            assert kind == "CHAR" and value == expected[attribute.name].decode()
    assert first["fields"]["layout"][1] == {"maps": contract.LAYOUT_MAPS, "tokens": contract.LAYOUT_TOKENS}[name]
    assert first["fields"]["plugin_namespace"][1] == contract.PLUGIN_NAMESPACE
    assert first["fields"]["plugin_version"][1] == contract.PLUGIN_VERSION


@pytest.mark.parametrize("zoo_name", ["polynl-marks-small", "polynl-tokens-small", "polynl-resnet-small"])
def test_rtx_builds_zoo_models_through_the_cli(tmp_path, zoo_name):
    """The demo's shipped model, the token model and a two-block ResNet with dynamic H, W (blocks at
    different N): `polynl export` then `polynl build --target rtx`. Each block's form is fixed at the
    profile's opt shape; the sidecar records the N of each node, here checked against eager's."""
    from conftest import run_cli
    from polynl_deploy.nn import POLYNL_BLOCKS
    from polynl_deploy.sources import load_source

    onnx_path, plan = tmp_path / f"{zoo_name}.onnx", tmp_path / f"{zoo_name}.plan"
    assert run_cli("export", zoo_name, "-o", onnx_path).returncode == 0
    result = run_cli("build", onnx_path, "-o", plan, "--target", "rtx", "--sm", "89", "--sm", "120")
    assert result.returncode == 0, result.stdout + result.stderr
    sidecar = json.loads((tmp_path / f"{zoo_name}.plan.json").read_text())
    assert sidecar["compute_capabilities"] == ["SM89", "SM120"]
    assert sidecar["polynl_nodes"] == len(json.loads(
        {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}["polynl_deploy.blocks"]))
    assert plan.stat().st_size > 100_000
    assert "already exists" not in result.stderr  # the function body's repeated node names, logged at debug

    model, seen = load_source(zoo_name).model, {}

    def record_positions(name):
        def hook(module, args, output):
            x = args[0]
            seen[f"PolyNL/{name}"] = int(np.prod(x.shape[2:] if x.dim() == 4 else x.shape[1:2]))
        return hook

    for name, block in model.named_modules():
        if isinstance(block, POLYNL_BLOCKS):
            block.register_forward_hook(record_positions(name))
    with torch.no_grad():
        model(torch.randn(*sidecar["profiles"][0]["opt"]))
    assert sidecar["forms_fixed_at_positions"] == seen and len(seen) == sidecar["polynl_nodes"]
    if zoo_name == "polynl-resnet-small":  # the forms are fixed in the precision-converted graph too
        half = run_cli("build", onnx_path, "-o", tmp_path / "half.plan", "--target", "rtx", "--sm", "89",
                       "--precision", "fp16", "--keep-io-fp32")
        assert half.returncode == 0, half.stdout + half.stderr


def test_built_plan_is_kept_out_of_a_triton_repository(exported, tmp_path):
    """The sidecar records the plan's hash and its target: Triton's tensorrt_plan backend (full TensorRT)
    cannot load a TensorRT-RTX engine, so make_triton_repo refuses it before writing anything."""
    from polynl_deploy.triton_repo import make_triton_repo

    plan = tmp_path / "tokens.plan"
    result = rtx_build(exported["tokens"], plan)
    assert result.metadata["plan_sha256"] == sha256_of(plan) and result.metadata["target"] == "rtx"
    with pytest.raises(ModelFileError, match="is a TensorRT-RTX engine"):
        make_triton_repo(tmp_path / "repo", exported["tokens"], plan_path=plan)
    assert not (tmp_path / "repo").exists()


def test_ctrl_c_during_a_build_cancels_it(exported, tmp_path, monkeypatch):
    """Ctrl-C lands in the progress monitor, inside TensorRT's build: the bindings would print the exception
    and go on, so the monitor answers the next step with False, and the build stops with no plan written."""
    from rich.progress import Progress

    started = []
    add_task = Progress.add_task

    def interrupted_once_started(self, *args, **kwargs):
        started.append(args)
        if len(started) == 2:
            raise KeyboardInterrupt
        return add_task(self, *args, **kwargs)

    monkeypatch.setattr(Progress, "add_task", interrupted_once_started)
    plan = tmp_path / "m.plan"
    with pytest.raises(KeyboardInterrupt):
        build_engine(BuildSettings(exported["tokens"], plan, target="rtx", sms=(89,), show_progress=True))
    assert len(started) >= 2 and not plan.exists() and not plan.with_name("m.plan.json").exists()
