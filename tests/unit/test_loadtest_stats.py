"""Load-test statistics on known data: the definitions of the conventions doc (§3.1)."""

from __future__ import annotations

import pytest

from loadtest.stats import RequestResult, max_concurrency_seen, summarize


def r(ttft: float, latency: float, out: int, start: float = 0.0, **kw: object) -> RequestResult:
    return RequestResult(ok=True, prompt_tokens=10, output_tokens=out, ttft=ttft,
                         latency=latency, start=start, **kw)


def test_tpot_definition() -> None:
    assert r(0.1, 1.1, 11).tpot == pytest.approx(0.1)  # (1.1 - 0.1) / (11 - 1)
    assert r(0.1, 0.1, 1).tpot is None  # one token: no TPOT


def test_summary_on_known_data() -> None:
    results = [r(0.1 * i, 1.0 + 0.1 * i, 11, start=i, itls=[0.05, 0.15]) for i in range(1, 11)]
    results.append(RequestResult(ok=False, error="HTTP 503"))
    s = summarize(results, duration=20.0, goodput={"ttft": 500})
    assert (s["completed"], s["failed"]) == (10, 1)
    assert s["total_input_tokens"] == 100 and s["total_output_tokens"] == 110
    assert s["request_throughput"] == pytest.approx(0.5)
    assert s["output_throughput"] == pytest.approx(5.5)
    assert s["total_token_throughput"] == pytest.approx(10.5)
    assert s["request_goodput"] == pytest.approx(5 / 20)  # ttft 0.1..0.5 s meet 500 ms
    # ttft 100..1000 ms: mean 550, median 550, numpy linear percentiles
    assert s["mean_ttft_ms"] == pytest.approx(550) and s["median_ttft_ms"] == pytest.approx(550)
    assert s["p90_ttft_ms"] == pytest.approx(910) and s["p99_ttft_ms"] == pytest.approx(991)
    assert s["std_ttft_ms"] == pytest.approx(287.228, rel=1e-4)  # population std
    assert s["mean_tpot_ms"] == pytest.approx(100)  # ((1.0 + 0.1i) - 0.1i) / (11 - 1) = 0.1 s
    assert s["mean_itl_ms"] == pytest.approx(100) and s["median_itl_ms"] == pytest.approx(100)
    assert s["mean_e2el_ms"] == pytest.approx(1550)
    assert s["errors"][-1] == "HTTP 503" and len(s["ttfts"]) == 11


def test_max_concurrency_from_intervals() -> None:
    rs = [r(0, 2.0, 2, start=0), r(0, 2.0, 2, start=1), r(0, 0.5, 2, start=2.5),
          r(0, 1.0, 2, start=1.5)]
    assert max_concurrency_seen(rs) == 3
