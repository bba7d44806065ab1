"""The load tester's own cost: requests against a minimal local endpoint that answers every
POST at once with a fixed SSE stream (no model, no waiting), so what is measured is the client.

    python benchmarks/loadtest_overhead.py [--requests 2000] [--concurrency 1 16 64]
        [--chunks 64]

The endpoint is a bare asyncio HTTP/1.1 server in its own process. Reported: mean E2E latency
per request at concurrency 1 (client + loopback + that trivial server) and the request rate the
client sustains; next to a tiny model's per-request latency (hundreds of ms) it is noise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.runner import LoadSpec, Target, run_once  # noqa: E402
from loadtest.workloads import random_workload  # noqa: E402


def _stream(chunks: int) -> bytes:
    events = [{"choices": [{"index": 0, "text": "x", "finish_reason": None}]}] * chunks
    events.append({"choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": chunks}})
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    body += b"data: [DONE]\n\n"
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


def _serve(port: int, chunks: int) -> None:
    reply = _stream(chunks)
    models = json.dumps({"data": [{"id": "fixed"}]}).encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                if head.startswith(b"GET /v1/models"):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: " + str(len(models)).encode() + b"\r\n\r\n"
                                 + models)
                elif head.startswith(b"GET"):
                    writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                else:
                    writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--chunks", type=int, default=64)
    ap.add_argument("--port", type=int, default=18777)
    args = ap.parse_args()
    proc = mp.get_context("spawn").Process(target=_serve, args=(args.port, args.chunks),
                                           daemon=True)
    proc.start()
    time.sleep(1.0)
    target = Target("fixed", f"http://127.0.0.1:{args.port}/v1")
    items = random_workload(args.requests, 8, args.chunks, 0.0, seed=0)
    rows = []
    try:
        for c in args.concurrency:
            r = asyncio.run(run_once(target, items, LoadSpec(max_concurrency=c)))
            rows.append({"concurrency": c, "completed": r["completed"], "failed": r["failed"],
                         "requests_per_s": r["request_throughput"],
                         "mean_e2el_ms": r["mean_e2el_ms"], "p99_e2el_ms": r["p99_e2el_ms"],
                         "mean_ttft_ms": r["mean_ttft_ms"]})
    finally:
        proc.kill()
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "chunks_per_request": args.chunks,
                      "requests": args.requests, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
