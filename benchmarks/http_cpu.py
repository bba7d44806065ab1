"""HTTP overhead: the same workload through the offline engine and through `unmask serve`.

    python benchmarks/http_cpu.py [--concurrency 64] [--requests 256] [--output 64]

Offline: every request handed to one in-process `Engine` (max_running = concurrency).
HTTP: a real server subprocess (engine in its own process) and `concurrency` streaming
clients keeping it full. Both report output tokens per second over the whole run.

The load generator shares the box with the server. `--client raw` (default) speaks keep-alive
HTTP/1.1 over asyncio streams and costs little CPU; `--client httpx` uses httpx, which on a
2-core box costs more CPU per request than the server does and, at each wave of 64 requests
finishing together, delays the next wave — that is then the load generator's limit, not
the server's (`http_steps` vs `offline_steps` shows it: partial batches).

On CPU the engine process runs torch on `cores - 1` threads and leaves a core to the API
process, so the offline engine is also timed at that thread count (`offline_same_threads`):
HTTP / that figure isolates what the HTTP layer itself costs. The CPU seconds of the API
process, the engine process and the load generator during the timed run are reported too;
`engine_busy` (engine CPU seconds / wall seconds) near 1 means the engine, not HTTP, is the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.core import GenerateRequest, SamplingParams  # noqa: E402
from server.engine.engine import Engine  # noqa: E402
from server.engine.llm import engine_config  # noqa: E402
from server.tiny import make_tiny_model  # noqa: E402
from tests.e2e.engine_harness import make_prompt  # noqa: E402
from tests.e2e.server_harness import API_KEY, RemoteServer  # noqa: E402


def offline(model: Path, prompts: list[list[int]], out: int, c: int) -> tuple[float, int]:
    """Output tokens per second and the number of engine steps."""
    engine = Engine(engine_config(str(model), max_running_requests=c, num_pages=4096))
    params = SamplingParams(max_tokens=out, ignore_eos=True)
    t0 = time.perf_counter()
    for i, p in enumerate(prompts):
        engine.add_request(GenerateRequest(f"o{i}", tuple(p), params))
    tokens = steps = 0
    while engine.has_work():
        tokens += sum(len(o.new_token_ids) for o in engine.step().outputs)
        steps += 1
    return tokens / (time.perf_counter() - t0), steps


async def http(url: str, prompts: list[list[int]], out: int, c: int) -> float:
    queue: asyncio.Queue[list[int]] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    tokens = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal tokens
        while not queue.empty():
            p = queue.get_nowait()
            body = {"prompt": p, "max_tokens": out, "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True}}
            async with client.stream("POST", url + "/v1/completions", json=body,
                                     headers={"Authorization": f"Bearer {API_KEY}"}) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {") and '"usage"' in line:
                        tokens += json.loads(line[6:])["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=c + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(c)))
        return tokens / (time.perf_counter() - t0)


async def raw_http(url: str, prompts: list[list[int]], out: int, c: int) -> float:
    """Keep-alive HTTP/1.1 over asyncio streams, reading the chunked SSE body by hand."""
    host, port = url.removeprefix("http://").split(":")
    queue = list(reversed(prompts))
    tokens = 0

    async def worker() -> None:
        nonlocal tokens
        reader, writer = await asyncio.open_connection(host, int(port))
        while queue:
            body = json.dumps({"prompt": queue.pop(), "max_tokens": out, "ignore_eos": True,
                               "stream": True,
                               "stream_options": {"include_usage": True}}).encode()
            writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: bench\r\n"
                         b"Content-Type: application/json\r\n"
                         b"Authorization: Bearer " + API_KEY.encode() + b"\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode(errors="replace"))
            while True:  # chunked transfer coding: size line, data, CRLF; size 0 ends it
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                data = await reader.readexactly(size + 2)
                if size == 0:
                    break
                for line in data.split(b"\n"):
                    if line.startswith(b"data: {") and b'"usage"' in line:
                        tokens += json.loads(line[6:])["usage"]["completion_tokens"]
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(c)))
    return tokens / (time.perf_counter() - t0)


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of one process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def engine_steps(url: str) -> int:
    text = httpx.get(url + "/metrics").text
    m = re.search(r"^unmask:denoise_steps_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    return int(float(m.group(1))) if m else 0


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--output", type=int, default=64)
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw",
                    help="load generator (see the module docstring)")
    ap.add_argument("--cpu-threads", type=int, default=None,
                    help="the server's engine threads (default: its own, cores - 1)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_model(Path(tmp) / "m", arch="llada2", seed=0)
        prompts = [make_prompt(model, args.prompt, seed=i) for i in range(args.requests)]
        off, off_steps = offline(model, prompts, args.output, args.concurrency)
        default_threads = torch.get_num_threads()
        engine_threads = args.cpu_threads or max(1, (os.cpu_count() or 1) - 1)
        torch.set_num_threads(engine_threads)
        off_same, _ = offline(model, prompts, args.output, args.concurrency)
        torch.set_num_threads(default_threads)
        srv = RemoteServer(model, "--num-pages", "4096", "--max-running-requests",
                           str(args.concurrency), "--cpu-threads", str(engine_threads))
        try:
            asyncio.run(http(srv.url, prompts[:8], args.output, 8))  # warm-up
            pids = {"api": srv.proc.pid, "engine": max(children(srv.proc.pid))}
            steps0 = engine_steps(srv.url)
            cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
            t0, client0 = time.perf_counter(), time.process_time()
            client = raw_http if args.client == "raw" else http
            web = asyncio.run(client(srv.url, prompts, args.output, args.concurrency))
            wall = time.perf_counter() - t0
            cpu = {k: round(cpu_seconds(p) - cpu0[k], 2) for k, p in pids.items()}
            cpu["load_generator"] = round(time.process_time() - client0, 2)
            http_steps = engine_steps(srv.url) - steps0
        finally:
            srv.stop()
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), **vars(args),
                      "cores": os.cpu_count(), "engine_threads": engine_threads,
                      "offline_tok_s": off, "offline_same_threads_tok_s": off_same,
                      "http_tok_s": web, "http_wall_s": wall, "cpu_s": cpu,
                      "engine_busy": cpu["engine"] / wall,
                      "offline_steps": off_steps, "http_steps": http_steps,
                      "ratio": web / off, "ratio_same_threads": web / off_same}, indent=2))
    print(f"offline {off:.1f} tok/s ({default_threads} threads), "
          f"{off_same:.1f} tok/s ({engine_threads}); HTTP {web:.1f} tok/s → "
          f"HTTP/offline = {web / off:.2f}, at equal engine threads {web / off_same:.2f}")


if __name__ == "__main__":
    main()
