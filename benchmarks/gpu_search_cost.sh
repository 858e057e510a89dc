#!/usr/bin/env bash
# Search cost on a CUDA machine (issue 5): whole run / one fit per strategy, GPU figures.
# Prepared to run unattended in a few minutes: fewer seeds than the CPU table, both
# workloads, then the result file is printed. Usage (from the repository root):
#   bash benchmarks/gpu_search_cost.sh [SEEDS]        # default 5 seeds
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SEEDS=${1:-5}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv || true
OUT=${OUT:-benchmarks/results/search_cost_gpu.md}
"$PY" benchmarks/search_cost.py --device cuda --threads 4 --seeds "$SEEDS" --out "$OUT"
echo "written: $OUT"
