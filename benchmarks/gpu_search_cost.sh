#!/usr/bin/env bash
# Search cost on a CUDA machine (issues 5 and 15): whole run / one fit per strategy, GPU
# figures. Prepared to run unattended in at most about 5 minutes, in four parts, each
# capped by `timeout` (search_cost.py rewrites its file after every seed, so a part cut
# short still reports the seeds it finished; the cut is said in the output):
#   1. issue 5: tabular MLP, hold-out, every strategy, and the Lightning-vs-raw step (SEEDS);
#   2. issue 5: digits CNN, the same (SEEDS);
#   3. issue 15: `vtss fit --config configs/quickstart.yaml` and the default logistic
#      regression hold-out / 5-fold, retrain vs auto (the default strategy) (SEEDS);
#   4. issue 15: the MLP with 5-fold selection, retrain vs parallel (MLP_SEEDS seeds:
#      45 retrain fits a seed).
# logistic_5x5 (225 tiny L-BFGS fits a seed under retrain) is skipped unless WITH_5X5=1.
# The parts' reports are joined into OUT. Usage (from the repository root):
#   bash benchmarks/gpu_search_cost.sh [SEEDS]        # default 3 seeds (MLP 5-fold: 1)
# Environment: PYTHON, OUT, MLP_SEEDS, WITH_5X5=1, LIMIT1..LIMIT4 (seconds per part).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SEEDS=${1:-3}
MLP_SEEDS=${MLP_SEEDS:-1}
LIMIT1=${LIMIT1:-100}
LIMIT2=${LIMIT2:-60}
LIMIT3=${LIMIT3:-60}
LIMIT4=${LIMIT4:-80}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv || true
OUT=${OUT:-benchmarks/results/search_cost_gpu.md}
PARTS=$(mktemp -d)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
COMMON=(--device cuda --threads 4)

# One part: its own report file; a part that times out or fails keeps what it wrote.
part() {
    local name=$1 limit=$2 rc=0 why
    shift 2
    echo "== part $name (limit ${limit} s): search_cost.py $*" >&2
    timeout "$limit" "$PY" benchmarks/search_cost.py "${COMMON[@]}" "$@" \
        --out "$PARTS/$name.md" || rc=$?
    if [[ $rc != 0 ]]; then
        [[ $rc == 124 ]] && why="timed out after ${limit} s" || why="failed (exit $rc)"
        echo "part $name $why" >&2
        printf '\n**Part %s %s**; the sections above are the seeds it finished.\n' \
            "$name" "$why" >>"$PARTS/$name.md"
    fi
}

part 1_tabular "$LIMIT1" --seeds "$SEEDS" --step-repeats 5 --workloads tabular
part 2_digits "$LIMIT2" --seeds "$SEEDS" --step-repeats 5 --workloads digits
part 3_quickstart_logistic "$LIMIT3" --seeds "$SEEDS" \
    --workloads quickstart,logistic,logistic_5fold --strategies retrain,auto
part 4_mlp_5fold "$LIMIT4" --seeds "$MLP_SEEDS" --workloads mlp_5fold --strategies retrain,parallel
if [[ "${WITH_5X5:-0}" == 1 ]]; then
    part 5_logistic_5x5 "${LIMIT5:-120}" --seeds "$SEEDS" --workloads logistic_5x5 \
        --strategies retrain,auto
fi

mkdir -p "$(dirname "$OUT")"
{
    echo "# Search cost on the GPU (issues 5 and 15)"
    echo
    echo "Command: \`bash benchmarks/gpu_search_cost.sh $SEEDS\` (MLP_SEEDS=$MLP_SEEDS," \
        "WITH_5X5=${WITH_5X5:-0}); limits per part ${LIMIT1} / ${LIMIT2} / ${LIMIT3} / ${LIMIT4} s." \
        "Each part below is one run of benchmarks/search_cost.py with its own header."
    for f in "$PARTS"/*.md; do
        [[ -f "$f" ]] || continue
        echo
        sed 's/^# /## /' "$f" # each part's title one level down
    done
} >"$OUT"
cat "$OUT"
echo "written: $OUT"
