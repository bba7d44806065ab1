"""Running a workload against a target: arrivals (all at once, Poisson or gamma), a concurrency
cap, warm-ups, the server's own counters scraped before and after, and sweeps over
concurrency levels."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from loadtest.client import send
from loadtest.stats import RequestResult, summarize
from loadtest.workloads import WorkItem


@dataclass
class Target:
    name: str
    url: str  # base URL ending in /v1
    model: str | None = None  # None: the first id of GET /v1/models
    api_key: str | None = None

    @property
    def root(self) -> str:
        return self.url.rstrip("/").removesuffix("/v1")


@dataclass
class LoadSpec:
    request_rate: float = math.inf  # requests/s; inf: all at t=0
    burstiness: float = 1.0  # 1: Poisson; else gamma with this shape
    max_concurrency: int | None = None
    num_warmups: int = 0
    ignore_eos: bool = False
    seed: int = 0
    goodput: dict[str, float] | None = None  # SLOs in ms: ttft, tpot, e2el


def intervals(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Gaps before each request: 0 at rate inf, else gamma(shape=b, scale=1/(rate·b))."""
    if math.isinf(rate):
        return [0.0] * n
    rng = np.random.default_rng(seed)
    return rng.gamma(burstiness, 1.0 / (rate * burstiness), size=n).tolist()


# `unmask:` counters whose means the report shows (sum and count of histograms)
SERVER_HISTOGRAMS = {"server_tokens_per_forward": "unmask:tokens_per_forward",
                     "server_steps_per_block": "unmask:steps_per_block"}


async def scrape(client: httpx.AsyncClient, target: Target) -> dict[str, float]:
    """Sums of the `_sum`/`_count` series we report; {} if the target has no such metrics."""
    try:
        r = await client.get(target.root + "/metrics", timeout=10)
    except httpx.HTTPError:
        return {}
    if r.status_code != 200:
        return {}
    out: dict[str, float] = {}
    wanted = {f"{m}_{s}" for m in SERVER_HISTOGRAMS.values() for s in ("sum", "count")}
    for line in r.text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def server_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, m in SERVER_HISTOGRAMS.items():
        n = after.get(f"{m}_count", 0.0) - before.get(f"{m}_count", 0.0)
        s = after.get(f"{m}_sum", 0.0) - before.get(f"{m}_sum", 0.0)
        out[key] = s / n if n > 0 else None
    return out


async def resolve_model(client: httpx.AsyncClient, target: Target) -> str:
    if target.model:
        return target.model
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    try:
        r = await client.get(target.url.rstrip("/") + "/models", headers=headers, timeout=10)
        return r.json()["data"][0]["id"]
    except (httpx.HTTPError, KeyError, IndexError, ValueError):
        return "default"  # the requests will fail with the target's reason


async def run_once(target: Target, items: list[WorkItem], load: LoadSpec) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=(load.max_concurrency or len(items) or 1) + 8)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10), limits=limits) as c:
        model = await resolve_model(c, target)
        for item in items[: load.num_warmups]:
            await send(c, target.url, item, model, target.api_key, load.ignore_eos)
        before = await scrape(c, target)
        sem = asyncio.Semaphore(load.max_concurrency or len(items) or 1)
        gaps = intervals(len(items), load.request_rate, load.burstiness, load.seed)
        t0 = time.perf_counter()

        async def one(item: WorkItem) -> RequestResult:
            async with sem:
                return await send(c, target.url, item, model, target.api_key,
                                  load.ignore_eos, t0)

        tasks = []
        for item, gap in zip(items, gaps, strict=True):
            if gap:
                await asyncio.sleep(gap)
            tasks.append(asyncio.create_task(one(item)))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - t0
        after = await scrape(c, target)
    out = summarize(list(results), duration, load.goodput)
    out |= server_means(before, after)
    out |= {"target": target.name, "model_id": model, "num_prompts": len(items),
            "request_rate": load.request_rate if math.isfinite(load.request_rate) else "inf",
            "burstiness": load.burstiness, "max_concurrency": load.max_concurrency,
            "generated_texts": [r.text for r in results]}
    return out


def run_sweep(target: Target, items: list[WorkItem], load: LoadSpec,
              levels: list[int] | None) -> list[dict[str, Any]]:
    """One run per concurrency level (or a single run at `load.max_concurrency`)."""
    runs = []
    for level in levels or [load.max_concurrency]:  # type: ignore[list-item]
        spec = LoadSpec(**{**load.__dict__, "max_concurrency": level})
        runs.append(asyncio.run(run_once(target, items, spec)))
    return runs
