"""Bad input on every command: exit code 2, a one-line message naming the problem, never a traceback."""

import math
import os
import pickle
import socket

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from safetensors.torch import save_file
from typer.testing import CliRunner

from polynl_deploy.errors import InferenceError, SettingsError

MODEL = "polynl-marks-small"  # one 1x32x32 input "x", one output "output"


def cli(*args):
    from polynl_cli.app import app  # not at collection: it wraps the surgeon commands (see test_surgeon)

    return CliRunner().invoke(app, [str(a) for a in args])


def assert_clean_error(result, *fragments, absent=()):
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    for fragment in absent:
        assert fragment not in result.stderr, result.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The marks model exported once, and small bad files beside it."""
    from polynl_deploy.settings import ExportSettings
    from polynl_deploy.workflows import run_export

    d = tmp_path_factory.mktemp("bad")
    run_export(ExportSettings(MODEL, d / "marks.onnx"))
    model = onnx.load(str(d / "marks.onnx"))
    onnx.save_model(model, str(d / "ext.onnx"), save_as_external_data=True, location="ext.data",
                    size_threshold=0)
    (d / "ext.data").unlink()
    np.savez(d / "zero.npz", x=np.zeros((0, 1, 32, 32), np.float32))
    (d / "empty.npz").write_bytes(b"")
    (d / "adir.onnx").mkdir()
    # Reshape to a fixed 2x2: accepts x of shape (batch, 4) by its spec, fails at run time unless batch is 1
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [2, 2])])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10),
                    str(d / "reshape.onnx"))
    np.savez(d / "batch3.npz", x=np.ones((3, 4), np.float32))
    return d


@pytest.mark.parametrize("args", [("inspect", "{d}/ext.onnx"), ("run", "{d}/ext.onnx"),
                                  ("surgeon", "decompose", "{d}/ext.onnx", "-o", "{d}/out.onnx")])
def test_missing_external_data(files, args):
    assert_clean_error(cli(*[a.format(d=files) for a in args]), "ext.onnx", "ext.data", "missing")


@pytest.mark.parametrize("opset", ["5", "17", "999", "-1"])
def test_unsupported_opset(files, opset):
    assert_clean_error(cli("export", MODEL, "--opset", opset, "-o", files / "y.onnx"), f"opset {opset}")
    assert not (files / "y.onnx").exists()


def test_written_opset_is_the_reported_one(tmp_path):
    from polynl_deploy.settings import ExportSettings
    from polynl_deploy.workflows import run_export

    result = run_export(ExportSettings(MODEL, tmp_path / "m.onnx", opset=21))
    written = {o.domain: o.version for o in onnx.load(str(tmp_path / "m.onnx")).opset_import}
    assert result.opset == written[""] == 21


@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize("npz,fragment", [("zero.npz", "(0, 1, 32, 32)"), ("empty.npz", "empty")])
def test_empty_inputs(files, command, npz, fragment):
    option = "--inputs" if command == "run" else "--load-inputs"
    extra = ("--source", MODEL) if command == "validate" else ()
    assert_clean_error(cli(command, files / "marks.onnx", option, files / npz, *extra), npz, fragment)


def test_runtime_failure_names_model_inputs_and_reason(files):
    assert_clean_error(cli("run", files / "reshape.onnx", "--inputs", files / "batch3.npz"),
                       "InferenceError", "reshape.onnx", "x (3, 4)", "ONNXRuntimeError")


def test_eager_failure_is_typed():
    from polynl_deploy.backends.base import TensorSpec
    from polynl_deploy.backends.torch_backend import TorchRunner

    runner = TorchRunner(torch.nn.Linear(4, 2), [TensorSpec("x", "float32", (None, None))], ["y"])
    with pytest.raises(InferenceError, match=r"Linear .*x \(1, 3\)"):
        runner.infer({"x": np.ones((1, 3), np.float32)})


@pytest.mark.parametrize("args,fragment", [
    (("run", "{d}/marks.onnx", "--seed", "-5"), "seed must be >= 0"),
    (("validate", "{d}/marks.onnx", "--source", MODEL, "--seed", "-5"), "seed must be >= 0"),
    (("bench", "--threads", "-2", "--output-dir", "{d}/b"), "threads must be in 1.."),
    (("bench", "--threads", "0", "--output-dir", "{d}/b"), "threads must be in 1.."),
    (("demo", "--samples", "0", "-o", "{d}/demo"), "samples must be at least 1"),
    (("demo", "--samples", "-5", "-o", "{d}/demo"), "samples must be at least 1"),
    (("demo", "--samples", "999999", "-o", "{d}/demo"), "has 2000 samples"),
])
def test_bad_numbers(files, args, fragment):
    assert_clean_error(cli(*[a.format(d=files) for a in args]), fragment)


def test_source_that_does_not_match_the_onnx(files):
    assert_clean_error(cli("validate", files / "marks.onnx", "--source", "polynl-resnet-small"),
                       "polynl-resnet-small", "marks.onnx", "channels")


def test_huge_example_shape(files):
    assert_clean_error(cli("export", MODEL, "--input-shape", "1x1x100000x100000", "-o", files / "y.onnx"),
                       "1x1x100000x100000")


@pytest.mark.parametrize("args,fragment", [
    (("--atol", "-1"), "atol must be a finite number >= 0"),
    (("--atol", "nan"), "atol must be a finite number >= 0"),
    (("--rtol", "inf"), "rtol must be a finite number >= 0"),
    (("--tolerance", "output:-1:0"), "atol of output 'output'"),
    (("--tolerance", "nosuchout:1:1"), "['nosuchout']"),
    (("--tolerance", "output:a:b"), "'output:a:b'"),  # printed as is: no rich markup or emoji codes
])
def test_bad_tolerances(files, args, fragment):
    result = cli("validate", files / "marks.onnx", "--source", MODEL, *args)
    assert_clean_error(result, fragment)
    if "nosuchout" in args[1]:
        assert "['output']" in result.stderr


@pytest.mark.parametrize("shapes,fragments", [
    (("1x1x32x32", "1x1x32x32"), ("takes 1 input(s), but 2",)),
    (("1x3x32x32",), ("--input-shape", "1x3x32x32", "channels")),
])
def test_input_shapes_the_model_does_not_take(files, shapes, fragments):
    options = [a for s in shapes for a in ("--input-shape", s)]
    assert_clean_error(cli("export", MODEL, *options, "-o", files / "y.onnx"), *fragments,
                       absent=("torch.export",))


@pytest.mark.parametrize("args", [
    ("inspect", "{d}/adir.onnx"), ("run", "{d}/adir.onnx"), ("run", "{d}/marks.onnx", "--inputs", "{d}/adir.onnx"),
    ("build", "{d}/adir.onnx", "-o", "{d}/x.plan", "--target", "rtx"),
    ("export", MODEL, "-c", "{d}/adir.onnx", "-o", "{d}/y.onnx"), ("serve", "{d}/adir.onnx"),
])
def test_directory_given_for_a_file(files, args):
    assert_clean_error(cli(*[a.format(d=files) for a in args]), "adir.onnx: is a directory")


@pytest.mark.parametrize("host,port,fragment", [("999.1.1.1", 8000, "999.1.1.1:8000"),
                                                ("127.0.0.1", None, "Address already in use")])
def test_serve_cannot_listen(host, port, fragment):
    from polynl_deploy.serving.server import _listening_socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = port or taken.getsockname()[1]
        with pytest.raises(SettingsError, match=fragment):
            _listening_socket(host, port)


@pytest.mark.parametrize("args,fragment", [
    (("build", "{d}/marks.onnx", "-o", "{d}/x.plan", "--target", "rtx", "--timing-cache", "{d}/t.cache"),
     "--timing-cache applies to target trt"),
    (("build", "{d}/marks.onnx", "-o", "{d}/x.plan", "--workspace-mib", "0"), "workspace must be positive"),
    (("build", "{d}/marks.onnx", "-o", "{d}/x.plan", "--target", "rtx", "--sm", "89", "--sm", "89"),
     "SM given more than once"),
    (("build", "{d}/marks.onnx", "-o", "{d}/x.plan", "--target", "rtx", "--min", "x:1x1x8x8", "--min",
      "x:1x1x16x16"), "--min given twice for input 'x'"),
    (("build", "{d}/marks.onnx", "-o", "{d}/x.plan", "--target", "rtx", "--min", "1x1x8x8", "--min",
      "x:1x1x16x16"), "--min given twice for input 'x'"),
    (("build", "{d}/marks.onnx", "-o", "{d}/x.plan", "--target", "rtx", "--min", ":::"), "bad --min ':::'"),
    (("run", "{d}/marks.onnx", "--plugin", "{d}/nosuch.so"), "marks.onnx runs on ONNX Runtime"),
    (("run", "{d}/m.plan", "--plugin", "{d}/nosuch.so"), "nosuch.so: no such file"),
    (("validate", "{d}/marks.onnx", "--backends", "ort", "--engine", "{d}/m.plan"),
     "m.plan is only used by backend 'trt', which is not among --backends ort"),
    (("bench", "--no-layers", "--no-models", "--output-dir", "{d}/b"), "nothing to measure"),
    (("bench", "--nonlocal-memory-cap-gib", "-1", "--output-dir", "{d}/b"), "nonlocal_memory_cap_gib must be"),
    (("triton-repo", "{d}/marks.onnx", "-o", "{d}/repo", "--name", ""), "model name ''"),
])
def test_flags_that_would_do_nothing(files, args, fragment):
    assert_clean_error(cli(*[a.format(d=files) for a in args]), fragment)
    assert not (files / "x.plan").exists() and not (files / "repo").exists()


def test_integer_checkpoint_for_float_parameters(files):
    from polynl_deploy.sources import load_source

    state = {k: v.to(torch.int32) for k, v in load_source(MODEL).model.state_dict().items()}
    save_file(state, str(files / "int.safetensors"))
    assert_clean_error(cli("export", MODEL, "-c", files / "int.safetensors", "-o", files / "c.onnx"),
                       "dtype mismatch", "fc.weight (checkpoint torch.int32, model torch.float32)")
    assert not (files / "c.onnx").exists()


class _Exploit:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("kind, reason", [("pickle", ""), ("random", ""), ("torch.save", "GLOBAL"),
                                          ("text", "not a torch checkpoint")])
def test_unsafe_checkpoint_message_gives_no_unsafe_advice(tmp_path, kind, reason):
    path = tmp_path / "bad.pt"
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"w": _Exploit()}))
    elif kind == "torch.save":  # the zip format torch.save writes, holding an object that runs code on load
        torch.save({"w": _Exploit()}, path)
    elif kind == "text":
        path.write_text("hello world\n")
    else:
        path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8)))
    assert_clean_error(cli("export", MODEL, "-c", path, "-o", tmp_path / "c.onnx"),
                       "not a plain tensor checkpoint", "safetensors", reason,
                       absent=("weights_only=False", "will likely succeed", "`weights_only`", "(1)"))


def test_tolerance_values_are_checked_in_settings(tmp_path):
    from polynl_deploy.settings import ValidateSettings, parse_tolerances

    with pytest.raises(SettingsError, match="given twice"):
        parse_tolerances(["output:1:1", "output:2:2"])
    with pytest.raises(SettingsError, match="rtol"):
        ValidateSettings(tmp_path / "m.onnx", rtol=-math.inf)


def test_factory_that_fails_is_a_source_error(tmp_path, monkeypatch):
    """A module:factory whose factory raises (here: it needs an argument) is bad input, not a crash."""
    (tmp_path / "user_models.py").write_text("def make(width):\n    raise AssertionError('unreachable')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert_clean_error(cli("export", "user_models:make", "-o", tmp_path / "m.onnx"),
                       "user_models:make", "make() failed: TypeError")
    assert not (tmp_path / "m.onnx").exists()


def test_missing_optional_packages_are_named(tmp_path, monkeypatch):
    """serve without the serve extra, and bench plots without matplotlib, say what to install (bench before
    any timing)."""
    import importlib.util
    import sys

    find_spec = importlib.util.find_spec
    missing = {"fastapi", "matplotlib"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else find_spec(name, *a))
    for name in [m for m in sys.modules if m.startswith("polynl_deploy.serving")]:
        monkeypatch.delitem(sys.modules, name)
    assert_clean_error(cli("serve", tmp_path / "m.onnx"), "serving needs fastapi", "polynl-deploy[serve]")
    assert_clean_error(cli("bench", "--quick", "--output-dir", tmp_path / "b"), "plots need matplotlib", "--no-plots")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("source, fragment", [(":", "expected package.module:factory"),
                                              (".:foo", "expected package.module:factory"),
                                              (".mod:foo", "cannot import module")])
def test_malformed_sources(tmp_path, source, fragment):
    assert_clean_error(cli("export", source, "-o", tmp_path / "m.onnx"), fragment)


def test_factory_default_shape_is_checked(tmp_path, monkeypatch):
    (tmp_path / "shaped.py").write_text(
        "import torch\n"
        "def make():\n    model = torch.nn.Conv2d(3, 4, 1)\n    model.default_input_shape = '1x3x8x8'\n    return model\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert_clean_error(cli("export", "shaped:make", "-o", tmp_path / "m.onnx"),
                       "default_input_shape '1x3x8x8' is not a tuple of positive integers")


def test_export_never_writes_over_the_files_the_model_came_from(tmp_path, monkeypatch):
    """An output path equal to the factory's module (or a checkpoint) is refused before anything is written."""
    module = tmp_path / "own_model.py"
    module.write_text("import torch\n"
                      "def make():\n    model = torch.nn.Conv2d(3, 4, 1)\n    model.default_input_shape = (1, 3, 8, 8)\n"
                      "    return model\n")
    before = module.read_bytes()
    monkeypatch.syspath_prepend(str(tmp_path))
    assert_clean_error(cli("export", "own_model:make", "-o", module), "would overwrite the input")
    assert module.read_bytes() == before


@pytest.mark.parametrize("args, fragment", [
    (("--max-body-mb", "nan"), "max_body_mb must be a positive number"),
    (("--max-delay-ms", "inf"), "max_delay_ms must be a number >= 0"),
])
def test_serve_numbers_must_be_finite(files, args, fragment):
    assert_clean_error(cli("serve", files / "marks.onnx", *args), fragment)


@pytest.mark.parametrize("name", [".", ".."])
def test_triton_model_name_cannot_leave_the_repository(files, tmp_path, name):
    assert_clean_error(cli("triton-repo", files / "marks.onnx", "-o", tmp_path / "repo", "--name", name, "--force"),
                       "not only dots")
    assert not (tmp_path / "config.pbtxt").exists() and not (tmp_path / "repo").exists()


@pytest.mark.parametrize("args, fragment", [
    (("--max", "2147483648x1x32x32"), "TensorRT takes dims up to 2147483647"),
    (("--max", "100000x1x100000x100000"), "elements a tensor"),
    (("--workspace-mib", "99999999999999999"), "below 2^63 bytes"),
])
def test_build_numbers_tensorrt_cannot_take(files, tmp_path, args, fragment):
    assert_clean_error(cli("build", files / "marks.onnx", "-o", tmp_path / "b.plan", "--target", "rtx", *args),
                       fragment)
    assert not (tmp_path / "b.plan").exists()


def test_bench_threads_are_bounded(tmp_path):
    assert_clean_error(cli("bench", "--quick", "--threads", "100000", "--output-dir", tmp_path / "b"), "threads must be in")


def test_inconsistent_polynl_node_is_named(files, tmp_path):
    """Wq with more rows than X has channels: build names the node's problem (no traceback), and inspect
    does not call the file ready for the plugin."""
    from polynl_deploy.inspection import inspect_model

    model = onnx.load(str(files / "marks.onnx"))
    node = next(n for n in model.graph.node if n.op_type == "PolyNL")
    wq = next(t for t in model.graph.initializer if t.name == node.input[1])
    rows, cols = wq.dims
    wq.CopyFrom(onnx.numpy_helper.from_array(np.zeros((rows + 1, cols), np.float32), wq.name))
    path = tmp_path / "badweight.onnx"
    onnx.save(model, str(path))
    assert_clean_error(cli("build", path, "-o", tmp_path / "b.plan", "--target", "rtx"),
                       "shape inference fails", f"Wq has {rows + 1} rows")
    summary = inspect_model(path)
    assert not summary.plugin_ready and any("shape inference fails" in issue for issue in summary.plugin_issues)


def test_input_sets_numbered_with_gaps_are_refused(files, tmp_path):
    """Sets 0 and 2: `--set 1` would otherwise run the file's set 2."""
    path = tmp_path / "gaps.npz"
    np.savez(path, **{"0/x": np.ones((1, 1, 32, 32), np.float32), "2/x": np.zeros((1, 1, 32, 32), np.float32)})
    assert_clean_error(cli("run", files / "marks.onnx", "--inputs", path, "--set", "1"),
                       "input sets must be numbered 0 to 1", "found [0, 2]")
