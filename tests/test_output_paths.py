"""Output paths: unwritable, in the way, or an input: a one-line error (exit 2) before any work, and nothing
left behind; outputs of several files (plan + sidecar, Triton repository, demo folder) are all or nothing."""

import shutil

import pytest
from typer.testing import CliRunner

from polynl_deploy.errors import OutputPathError, PolyNLError
from polynl_deploy.io import atomic_path, check_outputs, staged_directory

ZOO = "polynl-marks-small"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from polynl_deploy.settings import ExportSettings
    from polynl_deploy.workflows import run_export

    path = tmp_path_factory.mktemp("outputs") / "model.onnx"
    run_export(ExportSettings(ZOO, path))
    return path


@pytest.fixture
def workdir(exported, tmp_path, monkeypatch):
    """A folder with model.onnx, a directory ``adir`` and a regular file ``afile``, as the current directory."""
    shutil.copy(exported, tmp_path / "model.onnx")
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def listing(folder) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its content (None for folders)."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def invoke(*args) -> tuple[int, str]:
    from polynl_cli.app import app

    result = CliRunner(env={"COLUMNS": "300"}).invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    output = " ".join(result.output.split())
    assert "Traceback" not in output
    return result.exit_code, output


def refused(folder, *args) -> str:
    """Run the CLI, expect exit code 2 with an OutputPathError and ``folder`` unchanged; the message."""
    before = listing(folder)
    code, output = invoke(*args)
    assert code == 2, output
    assert "error (OutputPathError)" in output
    assert listing(folder) == before
    return output


FILE_COMMANDS = {
    "export": ["export", ZOO, "-o"],
    "run": ["run", "model.onnx", "--output"],
    "validate-report": ["validate", "model.onnx", "--source", ZOO, "--report"],
    "validate-save-inputs": ["validate", "model.onnx", "--source", ZOO, "--save-inputs"],
    "build": ["build", "model.onnx", "--target", "rtx", "--sm", "89", "-o"],
    "surgeon-fuse": ["surgeon", "fuse", "model.onnx", "-o"],
    "surgeon-decompose": ["surgeon", "decompose", "model.onnx", "-o"],
}
DIRECTORY_COMMANDS = {
    "triton-repo": ["triton-repo", "model.onnx", "-o"],
    "bench": ["bench", "--no-layers", "--model", ZOO, "--repeats", "1", "--warmup", "0", "--rounds", "1",
              "--output-dir"],
    "demo": ["demo", "--samples", "10", "-o"],
}


@pytest.mark.parametrize("command", FILE_COMMANDS)
@pytest.mark.parametrize("output, fragment", [
    ("adir", "output adir is an existing directory"),
    ("afile/x.out", "cannot write afile/x.out: afile is not a directory"),
    ("", "output . is an existing directory"),
])
def test_file_output_in_the_way(workdir, command, output, fragment):
    assert fragment in refused(workdir, *FILE_COMMANDS[command], output)


@pytest.mark.parametrize("command", [c for c in FILE_COMMANDS if c != "export"])
def test_file_output_that_is_the_input_is_refused(workdir, command):
    output = refused(workdir, *FILE_COMMANDS[command], "model.onnx")
    assert "output model.onnx would overwrite the input model.onnx" in output


@pytest.mark.parametrize("command", DIRECTORY_COMMANDS)
@pytest.mark.parametrize("output, fragment", [
    ("afile", "output folder afile is an existing file"),
    ("afile/sub", "cannot write afile/sub: afile is not a directory"),
])
def test_directory_output_in_the_way(workdir, command, output, fragment):
    assert fragment in refused(workdir, *DIRECTORY_COMMANDS[command], output)


def test_triton_repo_into_its_input_is_refused(workdir):
    assert "output model.onnx would overwrite the input model.onnx" in refused(
        workdir, *DIRECTORY_COMMANDS["triton-repo"], "model.onnx")


@pytest.mark.parametrize("args, in_the_way", [
    (["build", "model.onnx", "--target", "rtx", "--sm", "89", "-o", "q.plan"], "q.plan.json"),
    (["triton-repo", "model.onnx", "-o", "rp"], "rp/README.md"),
    (DIRECTORY_COMMANDS["bench"] + ["bp"], "bp/results.json"),
    (DIRECTORY_COMMANDS["bench"] + ["bp"], "bp/latency_vs_n_maps.png"),
    (DIRECTORY_COMMANDS["demo"] + ["dm"], "dm/report.json"),
])
def test_a_folder_in_place_of_any_output_file_stops_the_command_first(workdir, args, in_the_way):
    (workdir / in_the_way).mkdir(parents=True)
    assert f"output {in_the_way} is an existing directory" in refused(workdir, *args)


def test_validate_checks_every_output_before_writing_one(workdir):
    output = refused(workdir, *FILE_COMMANDS["validate-report"], "afile/r.json", "--save-inputs", "ok_i.npz")
    assert "afile/r.json" in output


def test_two_outputs_on_one_path_are_refused(workdir):
    output = refused(workdir, *FILE_COMMANDS["validate-report"], "x.json", "--save-inputs", "x.json")
    assert "output x.json is given for two outputs" in output


@pytest.mark.parametrize("model, fragment", [("nosuch", "unknown zoo model 'nosuch'"),
                                             ("polynl-resnet-small", "takes inputs of shape (3, 32, 32)")])
def test_demo_with_a_bad_model_writes_nothing(workdir, model, fragment):
    before = listing(workdir)
    code, output = invoke("demo", "--model", model, "-o", "dm")
    assert code == 2 and fragment in output
    assert listing(workdir) == before


def test_demo_failing_midway_leaves_the_folder_as_it_was(workdir, monkeypatch):
    import polynl_deploy.demo as demo

    def export_then_fail(model, example, path, **kwargs):
        path.write_bytes(b"partial")
        raise PolyNLError("export failed")

    monkeypatch.setattr(demo, "export_onnx", export_then_fail)
    (workdir / "dm").mkdir()
    (workdir / "dm" / "model.onnx").write_bytes(b"previous run")
    before = listing(workdir)
    with pytest.raises(PolyNLError, match="export failed"):
        demo.run_demo(demo.DemoSettings(output_dir=workdir / "dm", samples=10))
    assert listing(workdir) == before


def test_triton_repo_failing_midway_leaves_nothing(workdir, monkeypatch):
    import polynl_deploy.triton_repo as triton_repo

    def fail(*args):
        raise PolyNLError("README failed")

    monkeypatch.setattr(triton_repo, "_readme", fail)
    before = listing(workdir)
    with pytest.raises(PolyNLError, match="README failed"):
        triton_repo.make_triton_repo(workdir / "rp", workdir / "model.onnx")
    assert listing(workdir) == before


def test_triton_repo_replaces_its_models_and_keeps_the_others(workdir):
    from polynl_deploy.triton_repo import make_triton_repo

    (workdir / "rp" / "other").mkdir(parents=True)
    (workdir / "rp" / "model" / "1").mkdir(parents=True)
    (workdir / "rp" / "model" / "stale.txt").write_text("old")
    make_triton_repo(workdir / "rp", workdir / "model.onnx", overwrite=True)
    assert sorted(p.name for p in (workdir / "rp").iterdir()) == ["README.md", "model", "other"]
    assert sorted(p.name for p in (workdir / "rp" / "model").iterdir()) == ["1", "config.pbtxt"]
    assert [p.name for p in workdir.iterdir() if p.name.startswith(".")] == []


def test_build_onto_its_input_keeps_the_input(workdir):
    original = (workdir / "model.onnx").read_bytes()
    refused(workdir, *FILE_COMMANDS["build"], "model.onnx")
    assert (workdir / "model.onnx").read_bytes() == original


@pytest.mark.tensorrt_rtx
def test_build_writes_plan_and_sidecar_or_neither(workdir):
    from polynl_deploy.tensorrt.builder import build_engine
    from polynl_deploy.tensorrt.settings import BuildSettings

    settings = BuildSettings(workdir / "model.onnx", workdir / "q.plan", target="rtx", show_progress=False)
    (workdir / "q.plan.json").mkdir()  # after the early checks: the sidecar's rename fails
    before = listing(workdir)
    with pytest.raises(OutputPathError, match="q.plan.json"):
        build_engine(settings)
    assert listing(workdir) == before


def test_atomic_path_names_the_target(tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(OutputPathError, match="adir"):
        with atomic_path(tmp_path / "adir") as tmp:
            tmp.write_bytes(b"x")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputPathError, match="afile"):
        with atomic_path(tmp_path / "afile" / "x.onnx"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]


def test_staged_directory_is_all_or_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staged_directory(target) as staging:
            (staging / "a.txt").write_text("new")
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    target.mkdir()
    (target / "keep.txt").write_text("kept")
    (target / "a.txt").write_text("old")
    with staged_directory(target) as staging:
        (staging / "a.txt").write_text("new")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"keep.txt": "kept", "a.txt": "new"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_check_outputs_accepts_new_paths(tmp_path):
    check_outputs(files=[tmp_path / "new" / "deeper" / "x.onnx", None], directories=[tmp_path / "repo"],
                  inputs=[tmp_path / "in.onnx", None])
    assert list(tmp_path.iterdir()) == []
