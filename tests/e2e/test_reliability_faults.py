"""Fault isolation, engine death, overload and KV exhaustion through a real server."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

import server.engine.engine as engine_module
from loadtest.soak import engine_pid
from server.core import FinishReason, SamplingParams
from tests.e2e.engine_harness import make_engine, make_prompt, run
from tests.e2e.server_harness import API_KEY, RemoteServer

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
MARKER = 700  # prompt token id that trips the test-only fault hook


def _complete(srv: RemoteServer, prompt: list[int], max_tokens: int, stream: bool = False,
              timeout: float = 120, n: int = 1) -> httpx.Response:
    return httpx.post(srv.url + "/v1/completions", headers=HEADERS, timeout=timeout, json={
        "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "stream": stream,
        "return_token_ids": True, "n": n})


@pytest.fixture(scope="module")
def srv(tiny_llada2: Path) -> Iterator[RemoteServer]:
    """One server for the poisoned-request, overload and KV-exhaustion tests: fault hook on,
    a 10-page pool (so a 320-token context), at most 6 requests / 800 tokens in flight."""
    s = RemoteServer(tiny_llada2, "--num-pages", "10", "--max-running-requests", "6",
                     "--max-queued-requests", "6", "--max-queued-tokens", "800",
                     env={"UNMASK_TEST_FAULT_TOKEN": str(MARKER)})
    yield s
    assert s.stop() == 0


def test_poisoned_request_fails_alone(srv: RemoteServer) -> None:
    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120, headers=HEADERS) as c:
            def body(p: list[int]) -> dict[str, object]:
                return {"prompt": p, "max_tokens": 48, "ignore_eos": True}
            normal = [c.post(srv.url + "/v1/completions", json=body([100 + i, 200, 300]))
                      for i in range(4)]
            poisoned = c.post(srv.url + "/v1/completions", json=body([150, MARKER, 160]))
            return await asyncio.gather(poisoned, *normal)

    bad, *good = asyncio.run(go())
    assert bad.status_code == 500, bad.text
    err = bad.json()["error"]
    assert err["type"] == "InternalServerError" and "failed alone" in err["message"]
    assert "Traceback" not in bad.text
    for r in good:
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 48
    # streaming: the error arrives in-stream, the others still finish
    s = _complete(srv, [MARKER], 8, stream=True)
    assert s.status_code == 200 and '"InternalServerError"' in s.text
    assert httpx.get(srv.url + "/health").status_code == 200
    assert _complete(srv, [101, 102], 8).status_code == 200
    assert srv.metric("unmask:kv_cache_usage_perc") == 0


def test_isolation_keeps_the_others_exact(tiny_llada2: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The culprit joins mid-flight, next to requests in the middle of their blocks; every
    other request decodes exactly the greedy tokens of a run without the culprit (itself
    checked against the reference decoder in test_exactness); no page is left held."""
    monkeypatch.setattr(engine_module, "_FAULT_TOKEN", MARKER)
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    reqs = [(f"r{i}", make_prompt(tiny_llada2, 30 + 9 * i, seed=300 + i), params)
            for i in range(3)]
    reqs.insert(1, ("culprit", [MARKER, *make_prompt(tiny_llada2, 20, seed=9)], params))
    engine = make_engine(tiny_llada2, num_pages=7, max_running_requests=4)
    result = run(engine, reqs, stagger=1)
    assert result.reasons["culprit"] is FinishReason.ERROR
    clean = run(engine, [r for r in reqs if r[0] != "culprit"], stagger=1)
    for rid, _, _ in reqs:
        if rid != "culprit":
            assert result.reasons[rid] is FinishReason.LENGTH, rid
            assert result.tokens[rid] == clean.tokens[rid], rid
    assert engine.kv.pool.num_used == 0


def test_engine_death_is_503_and_errors_in_flight(tiny_llada2: Path) -> None:
    srv = RemoteServer(tiny_llada2)  # no UNMASK_TEST_FAULT_TOKEN: the hook is off
    results: list[httpx.Response | str] = []

    def long(stream: bool) -> None:
        try:
            results.append(_complete(srv, [120, 130], 1500, stream=stream, timeout=30))
        except httpx.HTTPError as e:
            results.append(type(e).__name__)

    try:
        assert _complete(srv, [150, MARKER, 160], 8).status_code == 200
        threads = [threading.Thread(target=long, args=(s,)) for s in (False, True)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while srv.metric("unmask:num_requests_running") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        pid = engine_pid(srv.proc.pid)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        for t in threads:
            t.join(15)
        assert not any(t.is_alive() for t in threads), "in-flight requests hang"
        assert httpx.get(srv.url + "/health").status_code == 503
        assert httpx.get(srv.url + "/ready").status_code == 503
        by_kind = {isinstance(r, httpx.Response) and r.headers.get("content-type", "")
                   .startswith("text/event-stream"): r for r in results}
        plain, streamed = by_kind[False], by_kind[True]
        assert isinstance(plain, httpx.Response) and plain.status_code == 500
        assert plain.json()["error"]["message"] == "the engine process died"
        assert isinstance(streamed, httpx.Response) and '"error"' in streamed.text
        late = _complete(srv, [5], 4)
        assert late.status_code == 503, late.text  # new work: retry on another replica
        assert late.json()["error"]["message"] == "the engine is not running"
        assert srv.proc.wait(30) == 1  # then it exits non-zero: the container restarts
    finally:
        srv.stop()


def test_overload_sheds_with_503_and_admitted_succeed(srv: RemoteServer) -> None:
    # capacity 6 requests (of 66 tokens: 396 <= 800); 60 clients arrive at once (10x)
    async def go() -> list[int]:
        client = srv.async_client()

        async def one(i: int) -> int:
            try:
                r = await client.completions.create(
                    model="tiny", prompt=[100 + i, 200], max_tokens=64,
                    extra_body={"ignore_eos": True})
                assert r.usage.completion_tokens == 64
                return 200
            except openai.InternalServerError as e:
                assert e.status_code == 503 and e.response.headers["retry-after"]
                assert e.body["type"] == "ServiceUnavailableError"
                return 503
        return await asyncio.gather(*(one(i) for i in range(60)))

    t0 = time.monotonic()
    codes = asyncio.run(go())
    assert codes.count(200) >= 6 and codes.count(503) >= 30, codes
    assert time.monotonic() - t0 < 60
    # the token cap alone: one request (three choices) whose prompt + max_tokens exceed it
    r = _complete(srv, [100] * 10, 300, n=3)
    assert r.status_code == 503 and r.headers["retry-after"]
    assert httpx.get(srv.url + "/health").status_code == 200


def test_kv_exhaustion_preempts_with_identical_tokens(srv: RemoteServer) -> None:
    # 6 requests of 4-5 pages each against a 10-page pool: about 2.7x the pool at once
    prompts = [[100 + i] * (40 + 9 * i) for i in range(6)]

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=300, headers=HEADERS) as c:
            return await asyncio.gather(*(c.post(
                srv.url + "/v1/completions", json={"prompt": p, "max_tokens": 64,
                                                   "ignore_eos": True,
                                                   "return_token_ids": True})
                for p in prompts))

    crowd = asyncio.run(together())
    assert srv.metric("unmask:num_preemptions_total", 0) > 0
    for p, r in zip(prompts, crowd, strict=True):
        alone = _complete(srv, p, 64)
        assert r.status_code == alone.status_code == 200, r.text
        assert (r.json()["choices"][0]["token_ids"]
                == alone.json()["choices"][0]["token_ids"])
    assert srv.metric("unmask:kv_cache_usage_perc") == 0
