#!/bin/bash
# The recorded soak: default tiny LLaDA2 on CPU, 630 s, 8 concurrent clients.
cd /work/main
D=benchmarks/results/soak_cpu_2026-11-23
nice .venv/bin/unmask serve --port 18432 --device cpu --max-queued-requests 64 --log-level warning > $D/server.log 2>&1 &
SRV=$!
for i in $(seq 120); do curl -sf localhost:18432/ready >/dev/null && break; sleep 1; done
{ date -u; uname -m; nproc; } > $D/env.txt
nice .venv/bin/unmask loadtest --soak --base-url http://127.0.0.1:18432/v1 --soak-duration 630 --max-concurrency 8 --seed 0 --result-json $D/soak.json > $D/soak.txt 2>&1
echo "exit $?" >> $D/soak.txt
kill -TERM $SRV; wait $SRV; echo "server exit $?" >> $D/soak.txt
