#!/usr/bin/env bash
# GPU readiness in one run, under 10 minutes on one NVIDIA GPU: the device tests, `rlhf demo --device cuda`, SFT /
# PPO / GRPO throughput of a 12 x 768 GPT in fp32 and bf16, peak GPU memory, and OUT/summary.json.
#   benchmarks/gpu_check.sh                       # on a GPU machine (after: pip install -e '.[dev]' with CUDA torch)
#   benchmarks/gpu_check.sh --device cpu          # the same steps at small sizes (CI runs this)
#   benchmarks/gpu_check.sh --out runs/gpu-check  # where the runs and summary.json go
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PYTHON" benchmarks/gpu_check.py "$@"
