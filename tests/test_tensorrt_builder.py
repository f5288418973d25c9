"""Builder, runner and CLI without TensorRT: clear errors, and ``polynl run`` on ONNX Runtime."""

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from fixture_models import TokenNet, token_net
from polynl_deploy.errors import BackendUnavailableError, BuildSettingsError, ModelFileError
from polynl_deploy.export.exporter import export_onnx
from polynl_deploy.tensorrt.builder import build_engine, import_tensorrt, resolve_plugin_library
from polynl_deploy.tensorrt.settings import BuildSettings


@pytest.fixture(scope="module")
def tokens_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("builder") / "tokens.onnx"
    export_onnx(token_net(), torch.randn(*TokenNet.default_input_shape), path)
    return path


@pytest.fixture
def no_tensorrt(monkeypatch):
    """TensorRT absent: importing either module raises ImportError."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx_bindings", None)


@pytest.mark.parametrize("target, hint", [("trt", "--target rtx"), ("rtx", "tensorrt-rtx")])
def test_missing_tensorrt_is_a_clear_error(no_tensorrt, tokens_onnx, tmp_path, target, hint):
    with pytest.raises(BackendUnavailableError, match=hint):
        build_engine(BuildSettings(tokens_onnx, tmp_path / "m.plan", target=target))
    assert not (tmp_path / "m.plan").exists()


def test_trt_target_without_plugin_library_says_how_to_get_one(tokens_onnx, tmp_path, monkeypatch):
    from polynl_deploy import features

    monkeypatch.setattr(features, "detect", lambda: type("F", (), {"plugin_library": None})())
    settings = BuildSettings(tokens_onnx, tmp_path / "m.plan")
    with pytest.raises(BackendUnavailableError, match=r"2 PolyNL node\(s\).*POLYNL_PLUGIN_LIBRARY"):
        resolve_plugin_library(settings, 2)
    assert resolve_plugin_library(settings, 0) is None
    missing = BuildSettings(tokens_onnx, tmp_path / "m.plan", plugin_library=tmp_path / "nope.so")
    with pytest.raises(BackendUnavailableError, match="no such file"):
        resolve_plugin_library(missing, 2)


def test_import_tensorrt_for_rtx_when_installed():
    pytest.importorskip("tensorrt_rtx_bindings")
    assert import_tensorrt("rtx").__name__ == "tensorrt_rtx_bindings"


def test_runner_refuses_missing_engine(tmp_path):
    from polynl_deploy.tensorrt.runner import TensorRTRunner

    with pytest.raises(ModelFileError, match="no such engine file"):
        TensorRTRunner(tmp_path / "missing.plan")


def test_validation_knows_the_trt_backend(tokens_onnx):
    from polynl_deploy.validation import make_runner

    with pytest.raises(ModelFileError, match=r"tokens\.plan: no such engine file"):
        make_runner("trt", tokens_onnx)


def cli_app():
    from polynl_cli import tensorrt as commands

    app = typer.Typer()
    app.command()(commands.build)
    app.command()(commands.run)
    return app


def test_cli_run_onnx_with_generated_and_saved_inputs(tokens_onnx, tmp_path):
    out = tmp_path / "out.npz"
    result = CliRunner(env={"COLUMNS": "200"}).invoke(cli_app(), ["run", str(tokens_onnx), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "on ort" in " ".join(result.output.split())  # the table title wraps to the table width
    with np.load(out) as outputs:
        assert outputs["output"].shape == (2, 9, 3)
    inputs = tmp_path / "in.npz"
    np.savez(inputs, x=np.ones((1, 5, 10), np.float32))
    result = CliRunner(env={"COLUMNS": "200"}).invoke(cli_app(), ["run", str(tokens_onnx), "--inputs", str(inputs), "--output", str(out)])
    assert result.exit_code == 0, result.output
    with np.load(out) as outputs:
        assert outputs["output"].shape == (1, 5, 3)


@pytest.mark.tensorrt_rtx
def test_cli_build_rtx_with_shape_options(tokens_onnx, tmp_path):
    plan = tmp_path / "tokens.plan"
    result = CliRunner(env={"COLUMNS": "200"}).invoke(cli_app(), ["build", str(tokens_onnx), "-o", str(plan), "--target", "rtx",
                                            "--sm", "89", "--sm", "121", "--precision", "fp16", "--keep-io-fp32",
                                            "--max", "8x64x10", "--opt", "x:4x32x10"])
    assert result.exit_code == 0, result.output
    assert plan.is_file() and "SM89, SM121" in result.output
    assert "opt [4, 32, 10], max [8, 64, 10]" in result.output


@pytest.mark.parametrize("overrides, message", [
    ({"target": "rtx", "version_compatible": True}, "tied to the release"),
    ({"exclude_lean_runtime": True}, "only applies to --version-compatible"),
])
def test_version_compatibility_settings_are_checked(tokens_onnx, tmp_path, overrides, message):
    with pytest.raises(BuildSettingsError, match=message):
        BuildSettings(tokens_onnx, tmp_path / "m.plan", **overrides)


def test_cli_refuses_version_compatible_rtx_builds(tokens_onnx, tmp_path):
    from conftest import run_cli

    result = run_cli("build", tokens_onnx, "-o", tmp_path / "m.plan", "--target", "rtx", "--version-compatible")
    assert result.returncode != 0 and "tied to the release" in " ".join((result.stdout + result.stderr).split())
    assert not (tmp_path / "m.plan").exists()


class RecordingConfig:
    """What _configure sets on an IBuilderConfig (full TensorRT cannot be installed here)."""

    def __init__(self):
        self.flags, self.cleared, self.plugins_to_serialize = [], [], []

    def clear_flag(self, flag):
        self.cleared.append(flag)

    def add_optimization_profile(self, profile):  # the profile's index, or -1 when TensorRT refuses it
        self.profile = profile
        return 0

    def set_flag(self, flag):
        self.flags.append(flag)


FAKE_TRT = SimpleNamespace(BuilderFlag=SimpleNamespace(VERSION_COMPATIBLE="VC", EXCLUDE_LEAN_RUNTIME="NO_LEAN",
                                                      TF32="TF32"))
FAKE_BUILDER = SimpleNamespace(create_optimization_profile=lambda: SimpleNamespace(set_shape=lambda *a: None))


@pytest.mark.parametrize("vc, lean, flags, serialized", [
    (False, False, [], []),
    (True, False, ["VC"], ["lib.so"]),
    (True, True, ["VC", "NO_LEAN"], ["lib.so"]),
])
def test_version_compatible_builds_serialize_the_plugin_library(tokens_onnx, tmp_path, vc, lean, flags, serialized):
    from polynl_deploy.tensorrt.builder import _configure

    settings = BuildSettings(tokens_onnx, tmp_path / "m.plan", version_compatible=vc, exclude_lean_runtime=lean)
    config = RecordingConfig()
    _configure(FAKE_TRT, FAKE_BUILDER, config, settings, [], Path("lib.so"))
    assert config.flags == flags and config.plugins_to_serialize == serialized


def test_runner_trusts_the_lean_runtime_of_a_version_compatible_plan(tmp_path, monkeypatch):
    """A version-compatible plan loads its own plugin library and runs its own lean runtime."""
    import json

    from polynl_deploy.tensorrt import runner as runner_module

    plan = tmp_path / "m.plan"
    plan.write_bytes(b"plan")
    (tmp_path / "m.plan.json").write_text(json.dumps({
        "target": "trt", "plugin_library": "lib.so", "plugin_library_serialized": True,
        "lean_runtime_embedded": True}))
    runtimes, loaded = [], []

    class Runtime:
        def __init__(self, logger):
            self.engine_host_code_allowed = False
            runtimes.append(self)

        def deserialize_cuda_engine(self, data):
            return None

    def logger(level):
        return None

    logger.WARNING = 2
    fake = SimpleNamespace(__version__="10.x", Logger=logger, Runtime=Runtime)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runner_module, "import_tensorrt", lambda target: fake)
    monkeypatch.setattr(runner_module, "load_plugin_library", lambda trt, library: loaded.append(library))
    with pytest.raises(ModelFileError, match="cannot deserialize"):
        runner_module.TensorRTRunner(plan)
    assert runtimes[0].engine_host_code_allowed and loaded == []

    # --exclude-lean-runtime: no lean runtime in the plan, but its plugin library is host code all the same
    (tmp_path / "m.plan.json").write_text(json.dumps({
        "target": "trt", "plugin_library": "lib.so", "version_compatible": True, "plugin_library_serialized": True,
        "lean_runtime_embedded": False}))
    with pytest.raises(ModelFileError, match="cannot deserialize"):
        runner_module.TensorRTRunner(plan)
    assert runtimes[1].engine_host_code_allowed and loaded == []


class FakeRegistry:
    """IPluginRegistry as its Python binding behaves: load_library returns None when a creator of the
    library is already registered."""

    def __init__(self):
        self.creators, self.loads = set(), []

    def get_creator(self, name, version, namespace):
        return (name, version, namespace) if (name, version, namespace) in self.creators else None

    def load_library(self, path):
        self.loads.append(path)
        if ("PolyNL", "1", "polynl") in self.creators:
            return None
        self.creators.add(("PolyNL", "1", "polynl"))
        return object()


def test_plugin_library_is_loaded_once_per_process():
    """The demo, bench and serving build and then run in one process: the second load must not fail."""
    from polynl_deploy.tensorrt.builder import load_plugin_library

    registry = FakeRegistry()
    fake = SimpleNamespace(get_plugin_registry=lambda: registry)
    load_plugin_library(fake, Path("lib.so"))
    load_plugin_library(fake, Path("lib.so"))
    assert registry.loads == ["lib.so"]


def test_refused_profile_is_a_build_error(tokens_onnx, tmp_path):
    from polynl_deploy.errors import EngineBuildError
    from polynl_deploy.tensorrt.builder import _configure

    config = RecordingConfig()
    config.add_optimization_profile = lambda profile: -1
    with pytest.raises(EngineBuildError, match="refused the optimization profile"):
        _configure(FAKE_TRT, FAKE_BUILDER, config, BuildSettings(tokens_onnx, tmp_path / "m.plan"), [], None)


class FakeTimingCache:
    def __init__(self, data: bytes):
        self.entries = set(data.split(b",")) - {b""}

    def combine(self, other, ignore_mismatch):
        self.entries |= other.entries
        return True

    def serialize(self):
        return b",".join(sorted(self.entries))


class TimingCacheConfig(RecordingConfig):
    """create_timing_cache refuses bytes that are not a cache; set_timing_cache refuses one from another GPU."""

    def __init__(self, accepts=True):
        super().__init__()
        self.accepts, self.cache = accepts, None

    def create_timing_cache(self, data: bytes):
        if data.startswith(b"garbage"):
            raise TypeError("invalid timing cache")
        return FakeTimingCache(data)

    def set_timing_cache(self, cache, ignore_mismatch):
        if not self.accepts and cache.entries:
            return False
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache


@pytest.mark.parametrize("content, accepts", [(b"garbage", True), (b"other-gpu", False)])
def test_unusable_timing_cache_is_replaced_and_saving_merges(tokens_onnx, tmp_path, content, accepts, caplog):
    from polynl_deploy.tensorrt.builder import _configure, _save_timing_cache

    cache_path = tmp_path / "timing.cache"
    cache_path.write_bytes(content)
    config = TimingCacheConfig(accepts)
    settings = BuildSettings(tokens_onnx, tmp_path / "m.plan", timing_cache=cache_path)
    _configure(FAKE_TRT, FAKE_BUILDER, config, settings, [], None)
    assert config.cache is not None and config.cache.entries == set()
    assert "building with an empty one" in caplog.text
    config.cache.entries.add(b"this-build")
    cache_path.write_bytes(b"another-build")  # written meanwhile by a concurrent build
    _save_timing_cache(config, cache_path)
    assert cache_path.read_bytes() == b"another-build,this-build"


def test_trt_build_without_a_cuda_torch_stops_before_any_work(tokens_onnx, tmp_path, monkeypatch):
    from polynl_deploy.tensorrt import builder as builder_module

    monkeypatch.setattr(builder_module, "import_tensorrt", lambda target: SimpleNamespace(__version__="10.x"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match="sees no CUDA GPU"):
        build_engine(BuildSettings(tokens_onnx, tmp_path / "m.plan"))
    assert not (tmp_path / "m.plan").exists()


def test_runner_names_the_profile_when_a_shape_is_outside_it():
    from polynl_deploy.errors import InputError
    from polynl_deploy.tensorrt.runner import TensorRTRunner

    runner = object.__new__(TensorRTRunner)
    runner.path = Path("m.plan")
    runner.context = SimpleNamespace(set_input_shape=lambda name, shape: shape[0] <= 8)
    runner.engine = SimpleNamespace(get_tensor_profile_shape=lambda name, index: ([1, 9, 10], [4, 9, 10], [8, 9, 10]))
    runner._set_input_shape("x", (8, 9, 10))
    with pytest.raises(InputError, match=r"'x' of shape \[16, 9, 10\] is outside .* \(min \[1, 9, 10\], max \[8, 9, 10\]\)"):
        runner._set_input_shape("x", (16, 9, 10))



@pytest.mark.tensorrt_rtx
def test_rtx_profile_holds_each_inputs_min_opt_max(tokens_onnx, tmp_path):
    """The optimization profile _configure hands to TensorRT-RTX's real builder keeps min, opt and max apart."""
    from polynl_deploy.tensorrt.builder import _configure
    from polynl_deploy.tensorrt.profiles import Profile

    trt = import_tensorrt("rtx")
    builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    created = []

    class RecordingBuilder:
        def create_optimization_profile(self):
            created.append(builder.create_optimization_profile())
            return created[-1]

    config = builder.create_builder_config()
    profile = Profile("x", (1, 5, 10), (4, 32, 10), (8, 64, 10))
    settings = BuildSettings(tokens_onnx, tmp_path / "m.plan", target="rtx", sms=(89,))
    _configure(trt, RecordingBuilder(), config, settings, [profile], None)
    assert config.num_optimization_profiles == 1
    assert [tuple(shape) for shape in created[0].get_shape("x")] == [profile.min, profile.opt, profile.max]


@pytest.mark.tensorrt_rtx
@pytest.mark.parametrize("tf32", [False, True])
def test_tf32_is_off_unless_asked_for(tokens_onnx, tmp_path, tf32):
    """TensorRT enables TF32 by default; the build clears it (float32 stays float32) unless --tf32."""
    from polynl_deploy.tensorrt.builder import _configure

    trt = import_tensorrt("rtx")
    builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    config = builder.create_builder_config()
    assert config.get_flag(trt.BuilderFlag.TF32)
    settings = BuildSettings(tokens_onnx, tmp_path / "m.plan", target="rtx", sms=(89,), tf32=tf32)
    _configure(trt, builder, config, settings, [], None)
    assert config.get_flag(trt.BuilderFlag.TF32) == tf32
