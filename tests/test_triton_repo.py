"""make_triton_repo: the config.pbtxt parsed back with Triton's own protobuf schema, files and README."""

import importlib.util
from pathlib import Path

import pytest
import torch

import fixture_models
from polynl_deploy.errors import ModelFileError, OutputPathError, SettingsError
from polynl_deploy.triton_repo import PLUGIN_PATH_IN_IMAGE, make_triton_repo


def _model_config_pb2():
    """tritonclient's generated ModelConfig module, loaded by path: its package needs grpc to import."""
    tritonclient = pytest.importorskip("tritonclient")
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        pytest.skip("tritonclient ships no model_config_pb2.py")
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parse(config: Path):
    from google.protobuf import text_format

    pb2 = _model_config_pb2()
    return text_format.Parse(config.read_text(), pb2.ModelConfig()), pb2


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from polynl_deploy import export_onnx

    folder = tmp_path_factory.mktemp("triton")
    export_onnx(fixture_models.two_block_net(), torch.randn(2, 3, 10, 14), folder / "net.onnx")
    static = folder / "static.onnx"
    export_onnx(fixture_models.plain_net(), torch.randn(1, 3, 8, 8), static, dynamic=False)
    return folder / "net.onnx", static


def plan_with_sidecar(plan: Path, onnx_path: Path, content: bytes = b"engine bytes", *, target: str = "trt",
                      batches: tuple[int, int] = (1, 16), polynl_nodes: int = 2, **recorded) -> Path:
    """A stand-in plan with the sidecar ``polynl build`` writes beside it (hashes, target, profile batch
    range and PolyNL node count are what is read)."""
    import hashlib
    import json

    from polynl_deploy.io import sha256_of

    plan.write_bytes(content)
    plan.with_name(plan.name + ".json").write_text(json.dumps({
        "onnx_path": str(onnx_path), "onnx_sha256": sha256_of(onnx_path),
        "plan_sha256": hashlib.sha256(content).hexdigest(), "target": target, "tensorrt_version": "10.9.0",
        "polynl_nodes": polynl_nodes, **recorded,
        "profiles": [{"input": "x", "min": [batches[0], 3, 1, 1], "opt": [2, 3, 10, 14],
                      "max": [batches[1], 3, 20, 28]}]}))
    return plan


def test_onnx_and_plan_models(exported, tmp_path):
    onnx_path, _ = exported
    plan = plan_with_sidecar(tmp_path / "net.plan", onnx_path)
    repo = make_triton_repo(tmp_path / "repo", onnx_path, name="polynl", plan_path=plan, max_batch_size=16,
                            max_queue_delay_us=250, instances=2)
    assert [(m.name, m.platform) for m in repo.models] == [("polynl", "onnxruntime_onnx"), ("polynl_trt", "tensorrt_plan")]
    assert (repo.path / "polynl" / "1" / "model.onnx").read_bytes() == onnx_path.read_bytes()
    assert (repo.path / "polynl_trt" / "1" / "model.plan").read_bytes() == b"engine bytes"

    config, pb2 = _parse(repo.path / "polynl" / "config.pbtxt")
    assert (config.name, config.platform, config.max_batch_size) == ("polynl", "onnxruntime_onnx", 16)
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("x", pb2.TYPE_FP32, [3, -1, -1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [("output", pb2.TYPE_FP32, [4, -1, -1])]
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, pb2.ModelInstanceGroup.KIND_CPU)]

    plan_config, _ = _parse(repo.path / "polynl_trt" / "config.pbtxt")
    assert (plan_config.name, plan_config.platform, plan_config.max_batch_size) == ("polynl_trt", "tensorrt_plan", 16)
    assert [(g.count, g.kind) for g in plan_config.instance_group] == [(2, pb2.ModelInstanceGroup.KIND_GPU)]
    assert (repo.path / "polynl_trt" / "1" / "model.plan.json").read_bytes() == \
        plan.with_name("net.plan.json").read_bytes()

    readme = repo.readme.read_text()
    assert f"--backend-config=tensorrt,plugins={PLUGIN_PATH_IN_IMAGE}" in readme
    assert "- `polynl_trt`: TensorRT 10.9.0, profile batches 1 to 16" in readme
    assert "tritonserver --model-repository=/models" in readme
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == [], "temporary folders left behind"


def test_without_batching_keeps_the_batch_axis(exported, tmp_path):
    onnx_path, static = exported
    repo = make_triton_repo(tmp_path / "repo", onnx_path, max_batch_size=0, onnx_on_gpu=True)
    config, pb2 = _parse(repo.path / "net" / "config.pbtxt")
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [-1, 3, -1, -1]
    assert config.WhichOneof("scheduling_choice") is None
    assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU
    assert "plugins=" not in repo.readme.read_text()
    with pytest.raises(ModelFileError, match="no dynamic batch axis"):
        make_triton_repo(tmp_path / "repo2", static, max_batch_size=4)
    assert list(_parse(make_triton_repo(tmp_path / "repo3", static, max_batch_size=0).path / "static"
                       / "config.pbtxt")[0].input[0].dims) == [1, 3, 8, 8]


def test_existing_models_are_replaced_only_when_asked(exported, tmp_path):
    onnx_path, _ = exported
    make_triton_repo(tmp_path / "repo", onnx_path, max_batch_size=4)
    with pytest.raises(OutputPathError, match="exists"):
        make_triton_repo(tmp_path / "repo", onnx_path, max_batch_size=8)
    make_triton_repo(tmp_path / "repo", onnx_path, max_batch_size=8, overwrite=True)
    assert _parse(tmp_path / "repo" / "net" / "config.pbtxt")[0].max_batch_size == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_bad_arguments(exported, tmp_path):
    onnx_path, _ = exported
    with pytest.raises(SettingsError, match="model name"):
        make_triton_repo(tmp_path / "r", onnx_path, name="bad name")
    with pytest.raises(ModelFileError, match="no such engine"):
        make_triton_repo(tmp_path / "r", onnx_path, plan_path=tmp_path / "missing.plan")
    with pytest.raises(ModelFileError):
        make_triton_repo(tmp_path / "r", tmp_path / "missing.onnx")
    assert not (tmp_path / "r").exists()


def test_plan_must_be_the_one_built_from_the_onnx(exported, tmp_path):
    onnx_path, static_path = exported
    bare = tmp_path / "bare.plan"
    bare.write_bytes(b"random bytes")
    with pytest.raises(ModelFileError, match="no bare.plan.json beside it"):
        make_triton_repo(tmp_path / "r", onnx_path, plan_path=bare)
    other = plan_with_sidecar(tmp_path / "other.plan", static_path)
    with pytest.raises(ModelFileError, match="other.plan was built from .*static"):
        make_triton_repo(tmp_path / "r", onnx_path, plan_path=other)
    changed = plan_with_sidecar(tmp_path / "changed.plan", onnx_path)
    changed.write_bytes(b"engine bytes, changed")
    with pytest.raises(ModelFileError, match="bytes differ"):
        make_triton_repo(tmp_path / "r", onnx_path, plan_path=changed)
    assert not (tmp_path / "r").exists()


def test_onnx_changed_since_the_build(exported, tmp_path):
    from polynl_deploy.io import sha256_of

    onnx_path = tmp_path / "net.onnx"
    onnx_path.write_bytes(exported[0].read_bytes())
    plan = plan_with_sidecar(tmp_path / "net.plan", onnx_path)
    built_sha = sha256_of(onnx_path)
    onnx_path.write_bytes(exported[1].read_bytes())
    with pytest.raises(ModelFileError) as error:
        make_triton_repo(tmp_path / "r", onnx_path, plan_path=plan, max_batch_size=0)
    message = str(error.value)
    assert message.startswith(f"{onnx_path} changed since {plan} was built from it")
    assert built_sha[:12] in message and sha256_of(onnx_path)[:12] in message and "not from" not in message
    assert not (tmp_path / "r").exists()


def test_tensorrt_rtx_plan_is_refused(exported, tmp_path):
    onnx_path, _ = exported
    plan = plan_with_sidecar(tmp_path / "rtx.plan", onnx_path, target="rtx")
    with pytest.raises(ModelFileError, match=r"rtx.plan is a TensorRT-RTX engine .*cannot load; "
                                             r"build it with `polynl build .* --target trt"):
        make_triton_repo(tmp_path / "r", onnx_path, plan_path=plan)
    assert not (tmp_path / "r").exists()


def test_plan_max_batch_size_stays_within_its_profile(exported, tmp_path):
    onnx_path, _ = exported
    plan = plan_with_sidecar(tmp_path / "net.plan", onnx_path, batches=(1, 4))
    with pytest.raises(SettingsError, match=r"max_batch_size 16 exceeds the largest batch of .*net.plan's "
                                            r"optimization profile \(4\)"):
        make_triton_repo(tmp_path / "r", onnx_path, plan_path=plan, max_batch_size=16)
    assert not (tmp_path / "r").exists()

    repo = make_triton_repo(tmp_path / "r", onnx_path, plan_path=plan)  # default 8: the plan's 4, the ONNX's 8
    assert [(m.name, m.max_batch_size) for m in repo.models] == [("net", 8), ("net_trt", 4)]
    assert _parse(repo.path / "net" / "config.pbtxt")[0].max_batch_size == 8
    assert _parse(repo.path / "net_trt" / "config.pbtxt")[0].max_batch_size == 4
    assert "| `net_trt` | `tensorrt_plan` | 4 |" in repo.readme.read_text()
    small = make_triton_repo(tmp_path / "r2", onnx_path, plan_path=plan, max_batch_size=3)
    assert [m.max_batch_size for m in small.models] == [3, 3]

    from_two = plan_with_sidecar(tmp_path / "two.plan", onnx_path, batches=(2, 8))
    with pytest.raises(ModelFileError, match="profile's smallest batch is 2"):
        make_triton_repo(tmp_path / "r3", onnx_path, plan_path=from_two)
    assert _parse(make_triton_repo(tmp_path / "r3", onnx_path, plan_path=from_two, max_batch_size=0).path
                  / "net_trt" / "config.pbtxt")[0].max_batch_size == 0


def test_readme_describes_every_model_in_the_repository(exported, tmp_path):
    onnx_path, static = exported
    plan = plan_with_sidecar(tmp_path / "net.plan", onnx_path, batches=(1, 2))
    make_triton_repo(tmp_path / "repo", onnx_path, plan_path=plan)
    readme = make_triton_repo(tmp_path / "repo", static, max_batch_size=0).readme.read_text()
    for row in ("| `net` | `onnxruntime_onnx` | 8 |", "| `net_trt` | `tensorrt_plan` | 2 |",
                "| `static` | `onnxruntime_onnx` | 0 |", "- `net_trt`: TensorRT 10.9.0, profile batches 1 to 2",
                f"tritonserver --model-repository=/models --backend-config=tensorrt,plugins={PLUGIN_PATH_IN_IMAGE}",
                "`net_trt` need(s) the PolyNL TensorRT plugin.", "curl -s localhost:8000/v2/models/net_trt",
                "curl -s localhost:8000/v2/models/static"):
        assert row in readme, row

    plugin_free = plan_with_sidecar(tmp_path / "free.plan", onnx_path, polynl_nodes=0)
    readme = make_triton_repo(tmp_path / "other", onnx_path, plan_path=plugin_free).readme.read_text()
    assert "- `net_trt`: TensorRT 10.9.0" in readme and "plugins=" not in readme


def test_cli_command(exported, tmp_path):
    import typer
    from typer.testing import CliRunner

    from polynl_cli.serve import triton_repo

    app = typer.Typer()
    app.command()(triton_repo)
    app.command("unused")(lambda: None)  # two commands: typer then expects the command name
    result = CliRunner().invoke(app, ["triton-repo", str(exported[0]), "-o", str(tmp_path / "repo"),
                                      "--name", "cli", "--max-batch-size", "4", "--instances", "3"])
    assert result.exit_code == 0, result.output
    config, _ = _parse(tmp_path / "repo" / "cli" / "config.pbtxt")
    assert (config.max_batch_size, config.instance_group[0].count) == (4, 3)


def test_cli_plan_batch_limits(exported, tmp_path):
    from typer.testing import CliRunner

    from polynl_cli.app import app

    plan = plan_with_sidecar(tmp_path / "net.plan", exported[0], batches=(1, 2))
    args = ["triton-repo", str(exported[0]), "-o", str(tmp_path / "repo"), "--plan", str(plan)]
    refused = CliRunner().invoke(app, [*args, "--max-batch-size", "16"])
    assert refused.exit_code == 2 and "max_batch_size 16 exceeds" in refused.stderr, refused.output
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "repo").exists()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "(tensorrt_plan, max_batch_size 2)" in result.stdout
    assert "(onnxruntime_onnx, max_batch_size 8)" in result.stdout


@pytest.mark.tensorrt_rtx
def test_cli_refuses_a_real_tensorrt_rtx_plan(exported, tmp_path):
    from typer.testing import CliRunner

    from polynl_cli.app import app

    plan = tmp_path / "net.plan"
    built = CliRunner().invoke(app, ["build", str(exported[0]), "--target", "rtx", "--sm", "89", "-o", str(plan)])
    assert built.exit_code == 0, built.output
    result = CliRunner().invoke(app, ["triton-repo", str(exported[0]), "-o", str(tmp_path / "repo"),
                                      "--plan", str(plan)])
    assert result.exit_code == 2 and "is a TensorRT-RTX engine" in result.stderr, result.output
    assert not (tmp_path / "repo").exists()


def test_triton_loads_the_preload_library(exported, tmp_path):
    """Triton's `plugins=` only dlopens a library: the README names the one that registers at load time,
    and the folder mounted holds it beside the plugin library."""
    from polynl_deploy.features import PLUGIN_LIBRARY_NAME, PRELOAD_LIBRARY_NAME

    onnx_path, _ = exported
    readme = make_triton_repo(tmp_path / "repo", onnx_path, plan_path=plan_with_sidecar(tmp_path / "n.plan", onnx_path),
                              plugin_library="/opt/x/lib/" + PRELOAD_LIBRARY_NAME).readme.read_text()
    assert f"--backend-config=tensorrt,plugins=/opt/x/lib/{PRELOAD_LIBRARY_NAME}" in readme
    assert "-v /path/to/build/plugins:/opt/x/lib:ro" in readme and PLUGIN_LIBRARY_NAME in readme
    assert PLUGIN_PATH_IN_IMAGE.endswith("/" + PRELOAD_LIBRARY_NAME) and "version-compatible" not in readme


@pytest.mark.parametrize("recorded, plugins, version_compatible", [
    ({"version_compatible": True, "plugin_library_serialized": True}, False, True),
    ({"version_compatible": True, "plugin_library_serialized": False}, True, True),
])
def test_version_compatible_plans(exported, tmp_path, recorded, plugins, version_compatible):
    """A plan that carries its lean runtime needs version-compatible=true; one that carries the plugin
    library too needs no plugins= option."""
    onnx_path, _ = exported
    plan = plan_with_sidecar(tmp_path / "n.plan", onnx_path, **recorded)
    readme = make_triton_repo(tmp_path / "repo", onnx_path, plan_path=plan).readme.read_text()
    assert ("--backend-config=tensorrt,plugins=" in readme) == plugins
    assert ("--backend-config=tensorrt,version-compatible=true" in readme) == version_compatible


@pytest.mark.parametrize("precision, keep_io_fp32, expected", [
    ("fp16", False, "TYPE_FP16"), ("bf16", False, "TYPE_BF16"), ("fp16", True, "TYPE_FP32"), ("fp32", False, "TYPE_FP32"),
])
def test_plan_io_types_follow_its_precision(exported, tmp_path, precision, keep_io_fp32, expected):
    onnx_path, _ = exported
    plan = plan_with_sidecar(tmp_path / "n.plan", onnx_path, precision=precision, keep_io_fp32=keep_io_fp32)
    repo = make_triton_repo(tmp_path / "repo", onnx_path, plan_path=plan)
    plan_config, pb2 = _parse(repo.path / "net_trt" / "config.pbtxt")
    onnx_config, _ = _parse(repo.path / "net" / "config.pbtxt")
    assert {t.data_type for t in [*plan_config.input, *plan_config.output]} == {pb2.DataType.Value(expected)}
    assert {t.data_type for t in [*onnx_config.input, *onnx_config.output]} == {pb2.TYPE_FP32}


def test_scalar_per_batch_item_is_dims_one_reshaped(tmp_path):
    """Triton refuses empty dims: an output of shape [batch] becomes dims [ 1 ] with reshape [ ]."""
    import onnx

    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("ReduceSum", ["x", "axes"], ["score"], keepdims=0)], "rowsum",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])],
        [onnx.helper.make_tensor_value_info("score", onnx.TensorProto.FLOAT, ["batch"])],
        [onnx.helper.make_tensor("axes", onnx.TensorProto.INT64, [1], [1])])
    path = tmp_path / "rowsum.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 20)]), path)
    for batch in (8, 0):
        repo = make_triton_repo(tmp_path / f"repo{batch}", path, max_batch_size=batch)
        config, _ = _parse(repo.path / "rowsum" / "config.pbtxt")
        score = config.output[0]
        expected = [1] if batch else [-1]
        assert list(score.dims) == expected
        assert score.HasField("reshape") == bool(batch) and list(score.reshape.shape) == []
