#!/usr/bin/env bash
# Every GPU benchmark of issue 6 in one command, on one CUDA machine (H100 intended):
#   bash benchmarks/gpu_all.sh [MODEL_DIR]
# Writes raw outputs + the command, device and date to benchmarks/results/gpu_<date>/.
# Random weights give ~1 token per forward; runs with --simulate-tpf 2.55 use the acceptance
# oracle and their figures are "simulated TPF" (file names say so too).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODEL=${1:-/tmp/unmask-mini}
OUT=benchmarks/results/gpu_$(date -u +%Y-%m-%d)
mkdir -p "$OUT"
{
  echo "date: $(date -u --iso-8601=seconds)"
  echo "commit: $(git rev-parse HEAD)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  "$PY" -c "import flashinfer; print('flashinfer', flashinfer.__version__)" 2>&1 || true
} > "$OUT/device.txt"

run() {  # run NAME CMD...: raw stdout+stderr and the command line saved side by side
  local name=$1; shift
  echo "\$ $*" > "$OUT/$name.txt"
  "$@" >> "$OUT/$name.txt" 2>&1
}

run kernels "$PY" benchmarks/gpu_kernels.py --out "$OUT/kernels.json"
run step "$PY" benchmarks/gpu_step.py --model "$MODEL" --make --out "$OUT/step.json"
run step_eager "$PY" benchmarks/gpu_step.py --model "$MODEL" --modes diffusion \
  --concurrency 1,8 --enforce-eager --out "$OUT/step_eager.json"
run step_simulated_tpf_2.55 "$PY" benchmarks/gpu_step.py --model "$MODEL" --modes diffusion \
  --simulate-tpf 2.55 --out "$OUT/step_simulated_tpf_2.55.json"

serve_sweep() {  # serve_sweep NAME MODEL_DIR [serve flags...]: end-to-end load-test sweep
  local name=$1 dir=$2; shift 2
  "$PY" -m server.cli serve "$dir" --port 8011 --max-running-requests 128 "$@" \
    > "$OUT/${name}_server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 600); do curl -sf localhost:8011/health >/dev/null && break; sleep 1; done
  run "$name" "$PY" -m server.cli loadtest --base-url http://localhost:8011 \
    --workload random --input-len 512 --output-len 256 --num-prompts 256 --ignore-eos \
    --sweep-concurrency 1,8,32,128 --result-json "$OUT/$name.json" || true
  kill "$pid"; wait "$pid" || true
}
serve_sweep sweep_diffusion "$MODEL"
serve_sweep sweep_diffusion_simulated_tpf_2.55 "$MODEL" --simulate-tpf 2.55
serve_sweep sweep_ar "$MODEL-ling"
echo "results in $OUT"
