"""Per-request records and the aggregate metrics of `vllm bench serve` (same definitions and
key names): TTFT at the first chunk carrying output, ITL = gaps between such chunks, E2E latency
to the last one, TPOT = (latency − TTFT) / (output tokens − 1) for outputs longer than one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

PERCENTILES = (90, 99)


@dataclass
class RequestResult:
    ok: bool = False
    prompt_tokens: int = 0  # from the server's usage
    output_tokens: int = 0
    ttft: float = 0.0  # seconds
    itls: list[float] = field(default_factory=list)  # seconds between output chunks
    latency: float = 0.0  # seconds, send to last output chunk
    start: float = 0.0  # seconds since the run began
    error: str = ""
    text: str = ""

    @property
    def tpot(self) -> float | None:
        if self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


def _describe(name: str, values_s: list[float]) -> dict[str, float]:
    """mean/median/std/p90/p99 in milliseconds (0 for an empty list, as vLLM reports)."""
    x = np.asarray(values_s or [0.0], dtype=float) * 1000
    out = {f"mean_{name}_ms": float(x.mean()), f"median_{name}_ms": float(np.median(x)),
           f"std_{name}_ms": float(x.std())}
    for p in PERCENTILES:
        out[f"p{p}_{name}_ms"] = float(np.percentile(x, p))
    return out


def max_concurrency_seen(results: list[RequestResult]) -> int:
    """Most requests in flight at once (from start times and latencies)."""
    events = sorted([(r.start, 1) for r in results] + [(r.start + r.latency, -1)
                                                         for r in results])
    live = best = 0
    for _, d in events:
        live += d
        best = max(best, live)
    return best


def summarize(results: list[RequestResult], duration: float,
              goodput: dict[str, float] | None = None) -> dict[str, Any]:
    """`goodput`: SLOs in ms for any of ttft, tpot, e2el; a request counts if it meets all."""
    ok = [r for r in results if r.ok]
    total_in = sum(r.prompt_tokens for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    tpots = [t for r in ok if (t := r.tpot) is not None]
    good = [r for r in ok if _meets(r, goodput or {})]
    d = max(duration, 1e-9)
    out: dict[str, Any] = {
        "completed": len(ok), "failed": len(results) - len(ok), "duration": duration,
        "total_input_tokens": total_in, "total_output_tokens": total_out,
        "request_throughput": len(ok) / d,
        "request_goodput": len(good) / d if goodput else None,
        "output_throughput": total_out / d, "total_token_throughput": (total_in + total_out) / d,
        "max_concurrent_requests": max_concurrency_seen(ok),
    }
    out |= _describe("ttft", [r.ttft for r in ok])
    out |= _describe("tpot", tpots)
    out |= _describe("itl", [x for r in ok for x in r.itls])
    out |= _describe("e2el", [r.latency for r in ok])
    out |= {"input_lens": [r.prompt_tokens for r in results],
            "output_lens": [r.output_tokens for r in results],
            "ttfts": [r.ttft for r in results], "itls": [r.itls for r in results],
            "latencies": [r.latency for r in results], "start_times": [r.start for r in results],
            "errors": [r.error for r in results]}
    return out


def _meets(r: RequestResult, slo: dict[str, float]) -> bool:
    values = {"ttft": r.ttft, "tpot": r.tpot or 0.0, "e2el": r.latency}
    return all(values[k] * 1000 <= v for k, v in slo.items())
