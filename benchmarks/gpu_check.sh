#!/usr/bin/env bash
# The GPU check, prepared to run on a GPU host in <= 8 min (not a test; never run by CI):
#   1. install from an offline bundle when one is given (make bundle; no network needed)
#   2. `quick` with --jobs 4 (its 2D cells packed 4 per GPU at 0.25 GPU each, as resources: declares)
#   3. BreastMNIST CE at the paper's 100 epochs, one cell
#   4. a throughput table on the GPU (benchmarks/throughput.py --device cuda)
# It samples GPU utilisation with nvidia-smi throughout, prints cells per hour and the utilisation,
# and writes the runs file (bench export-runs) and the logs into OUT.
# Usage: benchmarks/gpu_check.sh [OUT] [BUNDLE]     (OUT default: gpu-check; BUNDLE: a `make bundle` folder)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${1:-gpu-check}" && cd "${1:-gpu-check}" && pwd)
BUNDLE=${2:-}
if [ -n "$BUNDLE" ]; then
  "$BUNDLE/install.sh" "$OUT/install" > "$OUT/install.log" 2>&1
  BIN="$OUT/install/.venv/bin"; ROOT="$OUT/install"; export BENCH_DATA_DIR="$BUNDLE/data"
else
  BIN="$PWD/.venv/bin"; ROOT="$PWD"; export BENCH_DATA_DIR=${BENCH_DATA_DIR:-$(cd .. && pwd)/shared/data/medmnist}
fi
export MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db" MLFLOW_DISABLE_TELEMETRY=true PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null || { echo "gpu_check: no nvidia-smi: this is not a GPU host" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -l 1 > "$OUT/gpu-util.csv" &
SMI=$!
trap 'kill $SMI 2>/dev/null || true' EXIT
cd "$ROOT"

t0=$(date +%s)
"$BIN/bench" suite quick --jobs 4 --no-progress > "$OUT/quick.log" 2>&1 || true
t1=$(date +%s)
"$BIN/bench" cell --dataset breastmnist --objective ce --epochs 100 --no-progress > "$OUT/ce100.log" 2>&1 || true
t2=$(date +%s)
"$BIN/python" benchmarks/throughput.py --device cuda --seconds 3 \
  --models resnet18_28,resnet18,resnet18_3d,resnet18_acs,resnet18_3d_tiny > "$OUT/throughput.txt" 2>&1 || true
"$BIN/bench" export-runs --suite quick --out "$OUT/quick-runs.zip" > /dev/null
kill $SMI 2>/dev/null || true

cells=$(grep -o "finished [0-9]*" "$OUT/quick.log" | tail -1 | cut -d' ' -f2)
echo
echo "quick --jobs 4: $(tail -1 "$OUT/quick.log")"
echo "  $cells cells in $((t1 - t0)) s = $(( ${cells:-0} * 3600 / (t1 - t0 > 0 ? t1 - t0 : 1) )) cells/hour"
echo "BreastMNIST CE, 100 epochs: $(tail -1 "$OUT/ce100.log") ($((t2 - t1)) s wall)"
awk -F', ' 'NF>=2 {s+=$2; n++; if ($2>m) m=$2} END {if (n) printf "GPU utilisation: mean %.0f%%, max %d%% over %d samples\n", s/n, m, n}' "$OUT/gpu-util.csv"
echo "throughput (images or volumes per second):"
cat "$OUT/throughput.txt" | sed -n '/^model/,$p'
echo "runs file: $OUT/quick-runs.zip; logs and samples in $OUT"
