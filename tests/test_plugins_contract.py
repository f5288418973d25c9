"""plugins/include/polynl_contract.h matches polynl_deploy/contract.py (generated, not stale)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from polynl_deploy import contract

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "plugins" / "gen_contract_header.py"
HEADER = ROOT / "plugins" / "include" / "polynl_contract.h"


def _constant(text: str, name: str) -> str:
    match = re.search(rf"constexpr [\w: ]+\*? ?{name} = ([^;]+);", text)
    assert match, f"{name} missing from {HEADER.name}"
    return match.group(1)


def _strings(initializer: str) -> list[str]:
    return re.findall(r'"([^"]*)"', initializer)


def test_header_is_up_to_date():
    result = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_check_fails_on_stale_header(tmp_path):
    stale = tmp_path / "polynl_contract.h"
    stale.write_text(HEADER.read_text().replace('"PolyNL"', '"PolyNLv0"'))
    result = subprocess.run([sys.executable, str(GENERATOR), "--check", "--output", str(stale)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "stale" in result.stderr


def test_generator_is_idempotent(tmp_path):
    out = tmp_path / "h.h"
    for _ in range(2):
        subprocess.run([sys.executable, str(GENERATOR), "--output", str(out)], check=True, capture_output=True)
    assert out.read_text() == HEADER.read_text()


def test_header_values_match_contract():
    text = HEADER.read_text()
    assert _strings(_constant(text, "kPluginName")) == [contract.OP_TYPE]
    assert _strings(_constant(text, "kDomain")) == [contract.DOMAIN]
    assert int(_constant(text, "kOpVersion")) == contract.OP_VERSION
    assert _strings(_constant(text, "kPluginNamespace")) == [contract.PLUGIN_NAMESPACE]
    assert _strings(_constant(text, "kPluginVersion")) == [contract.PLUGIN_VERSION]
    assert _strings(_constant(text, r"kInputNames\[kNumInputs\]")) == list(contract.INPUT_NAMES)
    assert _strings(_constant(text, r"kOutputNames\[kNumOutputs\]")) == list(contract.OUTPUT_NAMES)
    table = re.search(r"kAttributes\[kNumAttributes\] = \{(.*?)\};", text, re.S).group(1)
    fields = re.findall(r'\{"(\w+)", FieldKind::(\w+)\}', table)
    kinds = {"float": "kFloat32", "string": "kString"}
    assert fields == [(a.name, kinds[a.type]) for a in contract.ATTRIBUTES]
    enum = re.findall(r"kInput(\w+) = (\d+),", text)
    assert [int(index) for _, index in enum] == list(range(len(contract.INPUTS)))
    assert [name.lower() for name, _ in enum] == [name.lower() for name in contract.INPUT_NAMES]


def test_header_compiles(tmp_path):
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler (g++/c++) on PATH")
    source = tmp_path / "use_contract.cpp"
    source.write_text(
        '#include "polynl_contract.h"\n'
        f"static_assert(polynl::contract::kNumInputs == {len(contract.INPUTS)});\n"
        f"static_assert(polynl::contract::kNumAttributes == {len(contract.ATTRIBUTES)});\n"
        "static_assert(polynl::contract::kInputBo == polynl::contract::kNumInputs - 1);\n")
    subprocess.run([compiler, "-std=c++17", "-fsyntax-only", "-Wall", "-Werror", f"-I{HEADER.parent}", str(source)],
                   check=True)
