"""The polynl CLI through subprocesses, as a user runs it, including every kind of bad input."""

import json
import os
import pickle

import onnx
import pytest
import torch
from safetensors.torch import save_file

import fixture_models
from conftest import run_cli

SOURCE = "fixture_models:two_block_net"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "model.onnx"
    result = run_cli("export", SOURCE, "-o", out)
    assert result.returncode == 0, result.stderr
    assert "2 Poly-NL block(s)" in result.stdout
    return out


def test_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("export", "validate", "inspect", "doctor"):
        assert command in result.stdout


def test_validate_passes(exported, tmp_path):
    report = tmp_path / "report.json"
    inputs = tmp_path / "inputs.npz"
    result = run_cli("validate", exported, "--source", SOURCE, "--report", report, "--save-inputs", inputs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED" in result.stdout
    assert json.loads(report.read_text())["passed"] is True
    again = run_cli("validate", exported, "--source", SOURCE, "--load-inputs", inputs)
    assert again.returncode == 0 and "PASSED" in again.stdout


def test_validate_fails_with_exit_1_when_numbers_differ(exported):
    # an absurdly tight tolerance makes the honest float32 round-off a failure
    result = run_cli("validate", exported, "--source", SOURCE, "--atol", "0", "--rtol", "0")
    assert result.returncode == 1
    assert "FAILED" in result.stdout


def test_inspect_json(exported):
    result = run_cli("inspect", exported, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["plugin_ready"] is True
    assert [n["name"] for n in summary["polynl_nodes"]] == ["PolyNL/block1", "PolyNL/block2"]
    assert summary["polynl_nodes"][0]["channels"] == 12 and summary["polynl_nodes"][0]["inner_channels"] == 6
    assert summary["functions"] == ["polynl::PolyNL"]
    assert summary["opsets"] == {"ai.onnx": 20, "polynl": 1}
    table = run_cli("inspect", exported)
    assert "ready for the TensorRT plugin: yes" in table.stdout


def test_export_tokens_standard_ops_and_static(tmp_path):
    out = tmp_path / "tokens.onnx"
    result = run_cli("export", "fixture_models:token_net", "-o", out, "--mode", "standard-ops",
                     "--input-shape", "3x7x10", "--static", "--opset", "21")
    assert result.returncode == 0, result.stderr
    proto = onnx.load(str(out))
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [3, 7, 10]
    assert {o.domain: o.version for o in proto.opset_import} == {"": 21}
    inspect = json.loads(run_cli("inspect", out, "--json").stdout)
    assert inspect["polynl_nodes"] == [] and inspect["plugin_ready"] is False


def test_model_without_blocks(tmp_path):
    out = tmp_path / "plain.onnx"
    assert run_cli("export", "fixture_models:plain_net", "-o", out).returncode == 0
    result = run_cli("inspect", out)
    assert result.returncode == 0 and "0 Poly-NL block(s)" in result.stdout


def test_doctor():
    result = run_cli("doctor", "--json")
    assert result.returncode in (0, 1)
    found = json.loads(result.stdout)
    assert found["torch"] == torch.__version__ and "CPUExecutionProvider" in found["ort_providers"]


# --- bad input -----------------------------------------------------------------------------------

def assert_clean_error(result, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.mark.parametrize("content,fragment", [
    (None, "no such file"),
    (b"", "file is empty"),
    (b"definitely not protobuf \x00\xff" * 20, "not a readable ONNX model"),
])
def test_bad_onnx_files(tmp_path, content, fragment):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    for command in (["inspect", path], ["validate", path, "--source", SOURCE]):
        assert_clean_error(run_cli(*command), str(path), fragment)


def test_truncated_onnx(exported, tmp_path):
    data = exported.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    assert_clean_error(run_cli("inspect", path), "truncated.onnx", "not a readable ONNX model")


@pytest.mark.parametrize("source,fragment", [
    ("no_such_module:factory", "cannot import module 'no_such_module'"),
    ("fixture_models:missing", "has no callable 'missing'"),
    ("fixture_models:not_a_module", "returned int, not a torch.nn.Module"),
])
def test_bad_sources(tmp_path, source, fragment):
    out = tmp_path / "x.onnx"
    assert_clean_error(run_cli("export", source, "-o", out), fragment)
    assert not out.exists()


def test_bad_input_shape_and_export_failure_leave_nothing(tmp_path):
    out = tmp_path / "x.onnx"
    assert_clean_error(run_cli("export", SOURCE, "-o", out, "--input-shape", "2xbanana"), "bad input shape")
    assert_clean_error(run_cli("export", SOURCE, "-o", out, "--input-shape", "2x5x8x8"), "export failed")
    assert list(tmp_path.iterdir()) == []


def test_wrong_shape_at_validate(exported, tmp_path):
    import numpy as np
    inputs = tmp_path / "wrong.npz"
    np.savez(inputs, **{"0/x": np.zeros((1, 4, 8, 8), np.float32)})
    assert_clean_error(run_cli("validate", exported, "--source", SOURCE, "--load-inputs", inputs),
                       "input 'x' expects shape (batch, 3, height, width), got (1, 4, 8, 8)")
    np.savez(inputs, **{"0/x": np.zeros((1, 3, 8, 8), np.float64)})
    assert_clean_error(run_cli("validate", exported, "--source", SOURCE, "--load-inputs", inputs),
                       "expects dtype float32, got float64")


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('POLYNL_TEST_MARKER', '/tmp/polynl-pwned')}",))


def test_unsafe_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "evil.pt"
    with open(checkpoint, "wb") as handle:
        pickle.dump({"stem.weight": _Exploit()}, handle)
    os.environ["POLYNL_TEST_MARKER"] = str(marker)
    try:
        result = run_cli("export", SOURCE, "-o", tmp_path / "x.onnx", "--checkpoint", checkpoint)
    finally:
        del os.environ["POLYNL_TEST_MARKER"]
    assert_clean_error(result, "weights_only=True")
    assert not marker.exists() and not (tmp_path / "x.onnx").exists()


def test_checkpoints_good_and_mismatched(tmp_path):
    model = fixture_models.two_block_net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    good = tmp_path / "good.safetensors"
    save_file(state, str(good))
    assert run_cli("export", SOURCE, "-o", tmp_path / "ok.onnx", "--checkpoint", good).returncode == 0
    torch.save(state, tmp_path / "good.pt")
    assert run_cli("export", SOURCE, "-o", tmp_path / "ok2.onnx", "--checkpoint", tmp_path / "good.pt").returncode == 0

    bad = dict(state)
    bad["extra.weight"] = bad.pop("block1.query.weight")
    bad["head.weight"] = torch.zeros(4, 20, 3, 3)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    result = run_cli("export", SOURCE, "-o", tmp_path / "no.onnx", "--checkpoint", tmp_path / "bad.safetensors")
    assert_clean_error(result, "missing: block1.query.weight", "unexpected: extra.weight",
                       "head.weight (checkpoint (4, 20, 3, 3), model (4, 20, 1, 1))")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    assert_clean_error(run_cli("export", SOURCE, "-o", tmp_path / "no.onnx", "--checkpoint",
                               tmp_path / "junk.safetensors"), "not a readable safetensors file")
    assert_clean_error(run_cli("export", SOURCE, "-o", tmp_path / "no.onnx", "--checkpoint",
                               tmp_path / "absent.pt"), "no such file")
    assert not (tmp_path / "no.onnx").exists()


def test_bad_tolerance_option(exported):
    assert_clean_error(run_cli("validate", exported, "--source", SOURCE, "--tolerance", "output:x"),
                       "expected OUTPUT:ATOL:RTOL")


def test_run_reads_plain_and_saved_npz_and_refuses_other_files(exported, tmp_path):
    import numpy as np
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.zeros((1, 3, 6, 6), np.float32))
    out = tmp_path / "out.npz"
    result = run_cli("run", exported, "--inputs", plain, "--output", out)
    assert result.returncode == 0, result.stderr
    with np.load(out) as data:
        assert data[data.files[0]].shape == (1, 4, 6, 6)
    not_npz = tmp_path / "text.npz"
    not_npz.write_text("hello")
    assert_clean_error(run_cli("run", exported, "--inputs", not_npz), "not a readable .npz")

    from polynl_deploy.validation import save_inputs
    saved = tmp_path / "saved.npz"
    save_inputs(saved, [{"x": np.zeros((batch, 3, 6, 6), np.float32)} for batch in (1, 2, 3)])
    result = run_cli("run", exported, "--inputs", saved, "--set", "2", "--output", out)
    assert result.returncode == 0, result.stderr
    assert "inputs: set 2 of the 3 in" in " ".join(result.stdout.split())
    with np.load(out) as data:
        assert data[data.files[0]].shape == (3, 4, 6, 6)
    assert_clean_error(run_cli("run", exported, "--inputs", saved, "--set", "3"), "holds input sets 0 to 2, not set 3")
    assert_clean_error(run_cli("run", exported, "--set", "1"), "no inputs file given")
