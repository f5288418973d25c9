"""``inspect_model``'s plugin checks: each way a PolyNL node can miss the plugin's contract is named."""

import onnx
import pytest
import torch

from fixture_models import TokenNet, token_net
from polynl_deploy import contract
from polynl_deploy.export.exporter import export_onnx
from polynl_deploy.inspection import inspect_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("inspection") / "tokens.onnx"
    export_onnx(token_net(), torch.randn(*TokenNet.default_input_shape), path)
    return onnx.load(str(path))


def first_polynl_node(model: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.domain == contract.DOMAIN and n.op_type == contract.OP_TYPE)


def set_attribute(name: str, value):
    def edit(model: onnx.ModelProto) -> None:
        node = first_polynl_node(model)
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend([*kept, onnx.helper.make_attribute(name, value)])
    return edit


def drop_last_input(model: onnx.ModelProto) -> None:
    del first_polynl_node(model).input[-1]


def drop_function(model: onnx.ModelProto) -> None:
    del model.functions[:]


def bump_domain_opset(model: onnx.ModelProto) -> None:
    next(o for o in model.opset_import if o.domain == contract.DOMAIN).version = contract.OP_VERSION + 1


def test_exported_file_is_plugin_ready(exported, tmp_path):
    onnx.save(exported, str(tmp_path / "m.onnx"))
    summary = inspect_model(tmp_path / "m.onnx")
    assert summary.polynl_nodes and summary.plugin_issues == [] and summary.plugin_ready


@pytest.mark.parametrize("edit, expected", [
    (set_attribute("plugin_namespace", "other"), "plugin_namespace='other'"),
    (set_attribute("plugin_version", "9"), "plugin_version='9'"),
    (set_attribute("layout", "nhwc"), "layout 'nhwc' not in"),
    (drop_function, "no model-local PolyNL function"),
    (bump_domain_opset, f"opset import for domain {contract.DOMAIN!r} is {contract.OP_VERSION + 1}"),
], ids=["namespace", "version", "layout", "function", "opset"])
def test_each_contract_breach_is_named(exported, tmp_path, edit, expected):
    model = onnx.ModelProto()
    model.CopyFrom(exported)
    edit(model)
    onnx.save(model, str(tmp_path / "m.onnx"))
    summary = inspect_model(tmp_path / "m.onnx")
    assert not summary.plugin_ready
    assert any(expected in issue for issue in summary.plugin_issues), summary.plugin_issues


def test_wrong_input_count_is_refused_when_loading(exported, tmp_path):
    """The registered PolyNL schema makes the ONNX checker refuse a node without the contract's inputs."""
    from polynl_deploy.errors import ModelFileError

    model = onnx.ModelProto()
    model.CopyFrom(exported)
    drop_last_input(model)
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(ModelFileError, match="m.onnx: invalid ONNX model.*PolyNL"):
        inspect_model(tmp_path / "m.onnx")
