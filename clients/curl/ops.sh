#!/usr/bin/env bash
# Operational endpoints: liveness, readiness, version, models, Prometheus metrics.
set -euo pipefail
BASE=${UNMASK_BASE:-http://127.0.0.1:8000}
for p in health ready version v1/models; do echo "GET /$p -> $(curl -s "$BASE/$p")"; done
curl -s "$BASE/metrics" | grep -E '^unmask:(num_requests|kv_cache|tokens_per_forward_sum)'
