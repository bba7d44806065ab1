#!/bin/bash
# The recorded soak (docs/reliability.md): a tiny LLaDA2 checkpoint on CPU, served
# with a queue cap, soaked for 630 s by 8 concurrent clients. Run from the repository root.
set -u
D=benchmarks/results/soak_cpu_2026-11-23
PORT=${PORT:-18432}
# the tiny model `unmask serve` defaulted to when recorded (the generated tiny LLaDA2, peaky,
# seed 0); later the default became the shipped models/llada2, so it is named explicitly here
MODEL=${MODEL:-${TMPDIR:-/tmp}/unmask-soak-tiny}
[ -f "$MODEL/config.json" ] || .venv/bin/unmask make-tiny-model "$MODEL" --peaky --seed 0
nice .venv/bin/unmask serve "$MODEL" --port "$PORT" --device cpu --max-queued-requests 64 \
    --log-level warning > $D/server.log 2>&1 &
SRV=$!
for _ in $(seq 120); do curl -sf "localhost:$PORT/ready" >/dev/null && break; sleep 1; done
{ date -u; uname -m; echo "cpus: $(nproc)"; git rev-parse HEAD; uptime; } > $D/env.txt
nice .venv/bin/unmask loadtest --soak --base-url "http://127.0.0.1:$PORT/v1" \
    --soak-duration 630 --max-concurrency 8 --seed 0 --result-json $D/soak.json > $D/soak.txt 2>&1
echo "loadtest exit $?" >> $D/soak.txt
uptime >> $D/env.txt
kill -TERM $SRV; wait $SRV; echo "server exit $?" >> $D/soak.txt
