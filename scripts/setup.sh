#!/usr/bin/env bash
# Create .venv with the CPU build of torch and polynl-deploy (editable) plus test tools.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# Pin the CPU wheel first: a bare `torch` requirement would pull the multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test,tensorrt-rtx]"
