"""Shared fixtures; hardware markers skip with a printed reason where the hardware is absent."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))


def _skip_reasons() -> dict[str, str | None]:
    from polynl_deploy.features import detect

    found = detect()
    return {
        "gpu": None if found.cuda else "no CUDA GPU on this machine",
        "tensorrt": None if found.tensorrt_runtime else "full TensorRT (builder + runtime + GPU) not present",
        "tensorrt_rtx": None if importlib.util.find_spec("tensorrt_rtx_bindings")
        else "TensorRT for RTX bindings not installed",
    }


def pytest_collection_modifyitems(config, items):
    reasons = _skip_reasons()
    for item in items:
        for marker, reason in reasons.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and norm statistics everywhere (no identity shortcuts), eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * (0.3 if param.dim() > 1 else 0.5)
                        + (1.0 if name.endswith(("alpha", "beta")) else 0.0))
        for name, buf in module.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=generator) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=generator) + 0.5)
    return module.eval()


def run_cli(*args, cwd=None, env_extra=None, timeout=300) -> subprocess.CompletedProcess:
    """Run ``polynl`` as a user would, in a subprocess; tests/ is importable for factories."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "COLUMNS": "200", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "polynl_cli.app", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)
