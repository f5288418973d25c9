#!/usr/bin/env bash
# The checks that need a CUDA GPU, for a machine with the GPU, nvcc, cmake and torch but maybe no
# internet (such as the lent device machine, whose Python has torch, onnx, onnxruntime, typer and rich).
#
#   scripts/gpu-checks.sh tests [OUTPUT_DIR]   # every `gpu`-marked test: kernels vs eager torch, GPU sweep
#   scripts/gpu-checks.sh bench [OUTPUT_DIR]   # `polynl bench --gpu` (torch.compile left out: minutes per size)
#
# OUTPUT_DIR defaults to $OUT (set on the device machine), else gpu-checks/. It receives at most five
# files: device.txt, <step>.log, tests.xml (JUnit) and bench-gpu.tar.gz (CSV, JSON and plots).
# The packages are used from this checkout through links, so nothing is installed.
set -euo pipefail

step="${1:?usage: scripts/gpu-checks.sh tests|bench [OUTPUT_DIR]}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mkdir -p "${2:-${OUT:-gpu-checks}}" && cd "${2:-${OUT:-gpu-checks}}" && pwd)"
python="${PYTHON:-python3}"

links="$(mktemp -d)"
trap 'rm -rf "$links"' EXIT
ln -s "$repo/polynl_deploy" "$links/polynl_deploy"
ln -s "$repo/cli" "$links/polynl_cli"
ln -s "$repo/models" "$links/polynl_models"
export PYTHONPATH="$links${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
    nvcc --version | tail -n 2 || true
    "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available())"
} >"$out/device.txt" 2>&1
if ! "$python" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "no CUDA GPU here (torch.cuda.is_available() is False): nothing to check" >&2
    exit 2
fi

cd "$repo"
case "$step" in
tests)
    "$python" -m pytest -m gpu -rA -p no:cacheprovider tests/test_plugins_gpu.py tests/test_bench.py \
        --junitxml "$out/tests.xml" 2>&1 | tee "$out/tests.log"
    ;;
bench)
    results="$(mktemp -d)"
    contenders=()
    for name in polynl-naive-eager polynl-folded-eager polynl-cuda-fused-kernel nonlocal-dot-product-eager \
        nonlocal-embedded-gaussian-eager floor-torch floor-bandwidth; do
        contenders+=(--contender "$name")
    done
    "$python" -m polynl_cli.app bench --gpu "${contenders[@]}" --output-dir "$results/bench-gpu" 2>&1 |
        tee "$out/bench.log"
    tar -czf "$out/bench-gpu.tar.gz" -C "$results" bench-gpu
    rm -rf "$results"
    ;;
*)
    echo "unknown step '$step': use tests or bench" >&2
    exit 2
    ;;
esac
