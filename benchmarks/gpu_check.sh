#!/usr/bin/env bash
# GPU check (issue 4, item 6): on a CUDA machine, run the image VAE and diffusion configs
# and the tabular CTGAN config on the GPU, plus a direct timing of the VAE / diffusion
# generators on digits (fit time, sampling throughput), and print one markdown table.
# Budget: under 8 minutes in all (each config is capped by `timeout`).
# Usage (from anywhere; the repository's .venv unless PYTHON is set):
#   bash benchmarks/gpu_check.sh            # print the table
#   bash benchmarks/gpu_check.sh --write    # also write benchmarks/results/gpu.md
# Exits with status 2 and a clear message when no CUDA GPU is usable. Tests never need this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
VTSS=${VTSS:-.venv/bin/vtss}
WRITE=0
[[ "${1:-}" == "--write" ]] && WRITE=1
LIMIT=${LIMIT:-110} # seconds per run (3 configs + the generator timing: at most ~7.5 min)

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi missing or failing); nothing measured." >&2
    exit 2
fi
if ! GPU=$("$PY" -c "import torch; assert torch.cuda.is_available(); print(torch.cuda.get_device_name(0))" 2>/dev/null); then
    echo "gpu_check: nvidia-smi works but torch.cuda.is_available() is False; install a CUDA build of torch." >&2
    exit 2
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
LOG=$(mktemp -d)
ROWS=()

# One config on the GPU: wall time of the whole `vtss fit` and the search's own time
# (timing.search_seconds in the newest vtss_report.json under the config's root dir).
run_config() {
    local name=$1 config=$2 root=$3
    local t0 t1 rc=0 status="ok" search="n/a" report
    t0=$(date +%s.%N)
    timeout "$LIMIT" "$VTSS" fit --config "$config" --trainer.accelerator gpu \
        --trainer.devices 1 --trainer.default_root_dir "$root" >"$LOG/$name.log" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    if [[ $rc != 0 ]]; then
        [[ $rc == 124 ]] && status="timed out after ${LIMIT} s" || status="failed (exit $rc)"
        status+=": $(tail -n 1 "$LOG/$name.log" | tr '|' '/' | cut -c1-120)"
    fi
    report=$(find "$root" -name vtss_report.json 2>/dev/null | sort | tail -n 1 || true)
    if [[ -n "$report" ]]; then
        search=$("$PY" -c "import json,sys; print(f\"{json.load(open(sys.argv[1]))['timing']['search_seconds']:.1f}\")" "$report")
    fi
    ROWS+=("| \`vtss fit --config $config\` (GPU) | $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') | $search | $status |")
    echo "done: $name" >&2
}

ROOT=$(mktemp -d)
run_config vae configs/image_digits_vae.yaml "$ROOT/vae"
run_config diffusion configs/image_digits_diffusion.yaml "$ROOT/diffusion"
run_config ctgan configs/tabular_ctgan.yaml "$ROOT/ctgan"

# Generators alone on CUDA: fit on the digit-8 training images, sample 10,000 images.
GEN=$(timeout "$LIMIT" "$PY" - <<'EOF' 2>"$LOG/gen.log" || echo "| generator timing | failed (see $LOG/gen.log) | | | |"
import time, warnings
import torch
from vtss_lightning.data import ImageDataModule
from vtss_lightning.generators import DiffusionGenerator, VAEGenerator

warnings.filterwarnings("ignore")
gens = {
    "VAE (600 steps, width 32)": VAEGenerator(steps=600, width=32, latent_dim=8, beta=0.3, lr=0.003),
    "diffusion (600 steps, width 16, 25 DDIM steps)": DiffusionGenerator(steps=600, width=16, sample_steps=25),
    "diffusion (3000 steps, width 16, 25 DDIM steps)": DiffusionGenerator(steps=3000, width=16, sample_steps=25),
}
n = 10_000
for name, g in gens.items():
    dm = ImageDataModule(dataset="digits_binary", generator=g, seed=0)
    dm.setup("fit")
    dm.to_device("cuda")
    split = dm.holdout
    pos = torch.nonzero(split.y_train.cpu() == 1).flatten().numpy()
    torch.cuda.synchronize(); t0 = time.perf_counter()
    fitted = dm.pool_builder.fit_generator(split, pos, 1009, "digit 8")
    torch.cuda.synchronize(); t1 = time.perf_counter()
    dm.pool_builder.sample(split, fitted, n, 7)
    torch.cuda.synchronize(); t2 = time.perf_counter()
    print(f"| {name} on {len(pos)} images | {t1 - t0:.1f} | {n / (t2 - t1):,.0f} | |")
EOF
)

TABLE=$(
    cat <<EOF
GPU: **$GPU**; $(nvidia-smi --query-gpu=memory.total,driver_version --format=csv,noheader | head -n 1) (memory, driver); $("$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"); date $(date -u '+%Y-%m-%d %H:%M UTC').

| run | wall (s) | search (s) | status |
|---|---|---|---|
$(printf '%s\n' "${ROWS[@]}")

| generator on CUDA (digits_binary, digit 8) | fit (s) | samples/s (10,000 images) | |
|---|---|---|---|
$GEN
EOF
)
echo "$TABLE"
if [[ $WRITE == 1 ]]; then
    {
        echo "# GPU check"
        echo
        echo "Command: \`bash benchmarks/gpu_check.sh --write\` (per-run limit ${LIMIT} s)."
        echo "Wall = the whole \`vtss fit\` (data, generator fits, search, final fit, report);"
        echo "search = \`timing.search_seconds\` from its vtss_report.json."
        echo
        echo "$TABLE"
    } >benchmarks/results/gpu.md
    echo "wrote benchmarks/results/gpu.md" >&2
fi
