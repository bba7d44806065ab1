"""HTTP overhead: the same workload through the offline engine and through `unmask serve`.

    python benchmarks/http_cpu.py [--concurrency 64] [--requests 256] [--output 64]

Offline: every request handed to one in-process `Engine` (max_running = concurrency).
HTTP: a real server subprocess (engine in its own process) and `concurrency` streaming
clients (httpx) keeping it full. Both report output tokens per second over the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.core import GenerateRequest, SamplingParams  # noqa: E402
from server.engine.engine import Engine  # noqa: E402
from server.engine.llm import engine_config  # noqa: E402
from server.tiny import make_tiny_model  # noqa: E402
from tests.e2e.engine_harness import make_prompt  # noqa: E402
from tests.e2e.server_harness import API_KEY, RemoteServer  # noqa: E402


def offline(model: Path, prompts: list[list[int]], out: int, c: int) -> float:
    engine = Engine(engine_config(str(model), max_running_requests=c, num_pages=4096))
    params = SamplingParams(max_tokens=out, ignore_eos=True)
    t0 = time.perf_counter()
    for i, p in enumerate(prompts):
        engine.add_request(GenerateRequest(f"o{i}", tuple(p), params))
    tokens = 0
    while engine.has_work():
        tokens += sum(len(o.new_token_ids) for o in engine.step().outputs)
    return tokens / (time.perf_counter() - t0)


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--output", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_model(Path(tmp) / "m", arch="llada2", seed=0)
        prompts = [make_prompt(model, args.prompt, seed=i) for i in range(args.requests)]
        off = offline(model, prompts, args.output, args.concurrency)
        srv = RemoteServer(model, "--num-pages", "4096", "--max-running-requests",
                           str(args.concurrency))
        try:
            asyncio.run(http(srv.url, prompts[:8], args.output, 8))  # warm-up
            web = asyncio.run(http(srv.url, prompts, args.output, args.concurrency))
        finally:
            srv.stop()
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), **vars(args),
                      "offline_tok_s": off, "http_tok_s": web, "ratio": web / off}, indent=2))
    print(f"offline {off:.1f} tok/s, HTTP {web:.1f} tok/s → HTTP/offline = {web / off:.2f}")


if __name__ == "__main__":
    main()
