"""scripts/gpu-checks.sh on a machine without a GPU: it records the device and refuses with the reason."""

import re
import subprocess
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu-checks.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: the script would run the checks")
@pytest.mark.parametrize("step", ["tests", "bench"])
def test_refuses_without_a_gpu(tmp_path, step):
    done = subprocess.run(["bash", str(SCRIPT), step, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "no CUDA GPU here" in done.stderr
    assert "available False" in (tmp_path / "device.txt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device.txt"]


def test_names_the_steps():
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "usage: scripts/gpu-checks.sh tests|bench" in done.stderr


def test_bench_step_names_contenders_that_run_on_cuda():
    from polynl_deploy.bench.contenders import select

    loop = re.search(r"for name in (.*?); do", SCRIPT.read_text(), re.S).group(1)
    names = tuple(loop.replace("\\", " ").split())
    assert "polynl-cuda-fused-kernel" in names and "floor-bandwidth" in names
    assert [c.name for c in select(names, "cuda")] == sorted(names, key=[c.name for c in select(None, "cuda")].index)

