#!/usr/bin/env bash
# The GPU validation of issue 18 in one command, about 6 minutes on one H200, no network:
#
#   bash benchmarks/gpu_check.sh OUT_DIR                   # CUDA, LLaDA2.0-mini shape
#   bash benchmarks/gpu_check.sh OUT_DIR --device cpu --tiny   # the same path on a CPU (CI)
#
# Options after OUT_DIR go to benchmarks/gpu_check.py, except --no-install (skip the pip step).
# Environment: PY (default python3), GPU_CHECK_BUDGET_S (default 360: the whole run).
# Steps, each under its own share of the budget:
#   1. `pip install --no-deps --no-build-isolation -e .` (a failure is recorded; everything
#      runs from the source tree through PYTHONPATH either way);
#   2. benchmarks/gpu_check.py: ceilings, kernels, graphs vs eager, step timings vs roofline,
#      profiles (random weights made on the device: no checkpoint on disk);
#   3. `pytest tests/gpu -q` when pytest is importable (raw output kept);
#   4. the summary completed with 1 and 3, then printed.
# OUT_DIR ends up holding summary.md and summary.json (device, date, command, commit, every
# figure) and at most 4 raw files: env_install.txt, check_log.txt, profiles.txt,
# pytest_gpu.txt.
set -uo pipefail

usage="usage: bash benchmarks/gpu_check.sh OUT_DIR [--device cpu --tiny] [--no-install]"
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "$usage" >&2
    exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$1
shift
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || { echo "cannot create $OUT" >&2; exit 2; }
PY=${PY:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-360}
INSTALL=1
ARGS=()
for a in "$@"; do
    case $a in
        --no-install) INSTALL=0 ;;
        *) ARGS+=("$a") ;;
    esac
done
START=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - START))); }
cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
GPU_CHECK_COMMAND="bash benchmarks/gpu_check.sh $OUT${*:+ $*}"
GPU_CHECK_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo "unknown (no git metadata)")
export GPU_CHECK_COMMAND GPU_CHECK_COMMIT

ENVLOG="$OUT/env_install.txt"
{
    echo "\$ $GPU_CHECK_COMMAND"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $GPU_CHECK_COMMIT"
    echo "host: $(hostname 2>/dev/null || echo ?)"
    echo "python: $(command -v "$PY") $("$PY" -V 2>&1)"
    command -v nvidia-smi >/dev/null && nvidia-smi || echo "nvidia-smi: not available"
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1
    "$PY" -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -1
} > "$ENVLOG" 2>&1

install_rc=""
install_note="--no-install"
if [ "$INSTALL" = 1 ]; then
    echo "\$ $PY -m pip install --no-deps --no-build-isolation -e ." >> "$ENVLOG"
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INDEX=1 timeout 30 \
        "$PY" -m pip install --no-deps --no-build-isolation -e . >> "$ENVLOG" 2>&1
    install_rc=$?
    install_note="pip install --no-deps --no-build-isolation -e . (rc $install_rc)"
    [ "$install_rc" = 0 ] || echo "install failed (rc $install_rc): running from the source" \
        "tree with PYTHONPATH=$ROOT" | tee -a "$ENVLOG"
fi

# the check gets what is left but ~90 s for pytest and the summary
check_budget=$(( $(left) - 90 ))
[ "$check_budget" -lt 60 ] && check_budget=60
echo "gpu_check.py: budget ${check_budget}s"
timeout -k 10 $((check_budget + 15)) "$PY" benchmarks/gpu_check.py --out "$OUT" \
    --budget-s "$check_budget" "${ARGS[@]}" > "$OUT/check_log.txt" 2>&1
check_rc=$?
tail -n 5 "$OUT/check_log.txt"

pytest_args=(--pytest-note "pytest is not importable: tests/gpu not run")
if "$PY" -c "import pytest" 2>/dev/null; then
    t=$(left)
    if [ "$t" -lt 30 ]; then
        pytest_args=(--pytest-note "no time left for tests/gpu (${t}s of the budget)")
    else
        echo "pytest tests/gpu: up to ${t}s"
        # no third-party plugins: the GPU machine has none, and none is needed here. Kernel
        # tests first (the most telling at the real shape); SIGINT makes pytest print its
        # summary (names, failures) when the time runs out
        PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 timeout -s INT -k 10 "$t" "$PY" -m pytest -v \
            -p no:cacheprovider tests/gpu/test_kernels_gpu.py \
            tests/gpu/test_kernels_attention_gpu.py tests/gpu/test_attention_gpu.py \
            tests/gpu/test_engine_gpu.py > "$OUT/pytest_gpu.txt" 2>&1
        pytest_rc=$?
        tail -n 3 "$OUT/pytest_gpu.txt"
        pytest_args=(--pytest-rc "$pytest_rc" --pytest-log pytest_gpu.txt)
    fi
fi

"$PY" benchmarks/gpu_check.py --out "$OUT" --finalize --check-rc "$check_rc" \
    "${pytest_args[@]}" ${install_rc:+--install-rc "$install_rc"} \
    "--install-note=$install_note"
echo
cat "$OUT/summary.md"
echo "results in $OUT ($(( $(date +%s) - START )) s)"
exit "$check_rc"
