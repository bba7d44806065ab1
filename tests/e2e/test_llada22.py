"""LLaDA2.2 Levenshtein editing (docs/llada22.md) through the engine: greedy output equals the
plain reference decoder (`tests/reference/levenshtein.py`: no cache, batch 1, full recompute
every iteration) token for token on tiny 2.2 checkpoints where DELETE and SPLIT occur, at
concurrency 1 and 16 with staggered arrivals, with prefix-cache hits and with preemption; no
completed block holds MASK, DELETE or SPLIT (the engine asserts it on every completion); no
block runs past the iteration cap (counted); editing off is the 2.0 rule without edit ids;
temperature and logprobs are refused with editing on."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch

from server.core import FinishReason, SamplingParams
from server.decoding import levenshtein
from server.model.specials import read_special_ids
from tests.e2e.engine_harness import make_engine, make_prompt, run
from tests.reference.levenshtein import reference_generate_levenshtein
from tests.reference.model import load_reference

POSTS = 4


def params(max_tokens: int, editing: float | str = 0.0, **kw: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, threshold=0.5, editing_threshold=editing,
                          max_post_steps=None if editing == "off" else POSTS, **kw)


@cache
def _model(model_dir: Path):  # noqa: ANN202 - ReferenceModel
    return load_reference(model_dir)


@cache
def expected(model_dir: Path, ids: tuple[int, ...], max_tokens: int, editing: float | str,
             ignore_eos: bool = False) -> tuple[list[int], tuple[tuple[int, str], ...]]:
    sp = read_special_ids(model_dir)
    assert sp.mask_id is not None and sp.delete_id is not None and sp.split_id is not None
    forwards: list[tuple[int, str]] = []
    with torch.inference_mode():
        out = reference_generate_levenshtein(
            _model(model_dir), list(ids), max_tokens, threshold=0.5,
            editing_threshold=None if editing == "off" else float(editing),
            max_post_steps=POSTS, mask_id=sp.mask_id, delete_id=sp.delete_id,
            split_id=sp.split_id, eos_ids=() if ignore_eos else sp.eos_ids, forwards=forwards)
    return out, tuple(forwards)


def check(model_dir: Path, reqs: list, result) -> None:  # noqa: ANN001 - harness Run
    eos = read_special_ids(model_dir).eos_ids
    for rid, ids, p in reqs:
        want, _ = expected(model_dir, tuple(ids), p.max_tokens, p.editing_threshold,
                           p.ignore_eos)
        assert result.tokens[rid] == want, f"{rid}: prompt {len(ids)}, max {p.max_tokens}"
        stopped = bool(want) and want[-1] in eos and not p.ignore_eos
        assert result.reasons[rid] == (FinishReason.STOP if stopped else FinishReason.LENGTH)


def _requests(model_dir: Path, n: int, seed: int) -> list[tuple]:
    lens = [1, 20, 31, 32, 45, 64, 70, 100]
    return [(f"r{i}", make_prompt(model_dir, lens[i % len(lens)], seed=seed + i),
             params([33, 50, 64, 90][i % 4], editing=[0.0, 0.5][i % 2])) for i in range(n)]


@pytest.mark.parametrize("concurrency", [1, 16])
def test_engine_equals_the_reference(tiny_llada22_peaky: Path, concurrency: int) -> None:
    model_dir = tiny_llada22_peaky
    reqs = _requests(model_dir, 16, seed=300)
    engine = make_engine(model_dir, max_running_requests=concurrency)
    result = run(engine, reqs, stagger=1)
    check(model_dir, reqs, result)
    assert engine.kv.pool.num_used == 0


def test_delete_and_split_occur_and_blocks_stay_under_the_cap(tiny_llada22_peaky: Path
                                                              ) -> None:
    """The comparison above is not vacuous: on this checkpoint the reference writes both edit
    tokens, and no block of the engine runs more iterations than the cap."""
    model_dir = tiny_llada22_peaky
    sp = read_special_ids(model_dir)
    trace: list[dict] = []
    ids = make_prompt(model_dir, 45, seed=11)
    with torch.inference_mode():
        reference_generate_levenshtein(
            _model(model_dir), ids, 90, threshold=0.5, editing_threshold=0.0,
            max_post_steps=POSTS, mask_id=sp.mask_id, delete_id=sp.delete_id,
            split_id=sp.split_id, eos_ids=(), trace=trace)
    written = [t for it in trace if "written" in it for t in it["written"]]
    assert sp.delete_id in written and sp.split_id in written
    engine = make_engine(model_dir)
    steps: list[int] = []
    original = levenshtein.iterate

    def counting(seq, *a):  # noqa: ANN001, ANN002, ANN202
        assert seq.levenshtein is not None
        steps.append(seq.levenshtein.step)
        return original(seq, *a)

    levenshtein.iterate = counting
    try:
        result = run(engine, [("x", ids, params(90, ignore_eos=True))])
    finally:
        levenshtein.iterate = original
    assert result.tokens["x"] == expected(model_dir, tuple(ids), 90, 0.0, True)[0]
    assert steps and max(steps) < levenshtein.cap(32, POSTS)


def test_prefix_cache_hits(tiny_llada22_peaky: Path) -> None:
    model_dir = tiny_llada22_peaky
    shared = make_prompt(model_dir, 96, seed=42)
    reqs = [(f"h{i}", make_prompt(model_dir, 96 + 7 * i, seed=100 + i, prefix=shared),
             params(40)) for i in range(4)]
    engine = make_engine(model_dir)
    first = run(engine, reqs[:1])
    rest = run(engine, reqs[1:], stagger=2)
    assert rest.prefix_hits >= 3 * 96
    check(model_dir, reqs, first.__class__(tokens=first.tokens | rest.tokens,
                                           reasons=first.reasons | rest.reasons))
    again = run(engine, [("h0-again", reqs[0][1], reqs[0][2])])
    assert again.tokens["h0-again"] == first.tokens["h0"]
    assert again.prefix_hits >= 96


def test_preemption(tiny_llada22_peaky: Path) -> None:
    model_dir = tiny_llada22_peaky
    reqs = [(f"q{i}", make_prompt(model_dir, 40 + 9 * i, seed=200 + i),
             params(90, editing=[0.0, 0.5][i % 2], ignore_eos=True)) for i in range(8)]
    engine = make_engine(model_dir, num_pages=16, max_running_requests=8)
    result = run(engine, reqs, stagger=1)
    assert result.preempted > 0
    check(model_dir, reqs, result)
    assert engine.kv.pool.num_used == 0


def test_editing_off_is_the_20_rule_without_edit_ids(tiny_llada22_peaky: Path) -> None:
    model_dir = tiny_llada22_peaky
    sp = read_special_ids(model_dir)
    reqs = [(f"o{i}", make_prompt(model_dir, 30 + 11 * i, seed=500 + i),
             params(64, editing="off", ignore_eos=True)) for i in range(4)]
    result = run(make_engine(model_dir), reqs, stagger=1)
    check(model_dir, reqs, result)
    assert not {sp.delete_id, sp.split_id} & {t for v in result.tokens.values() for t in v}


def test_sampling_and_logprobs_are_refused_with_editing_on(tiny_llada22: Path) -> None:
    engine = make_engine(tiny_llada22)
    from server.core import GenerateRequest

    for p in (params(8, temperature=0.7), params(8, logprobs=1)):
        with pytest.raises(ValueError, match="Levenshtein"):
            engine.add_request(GenerateRequest("bad", (5, 6, 7), p))
    engine.add_request(GenerateRequest("ok", (5, 6, 7), params(8, editing="off",
                                                                temperature=0.7)))


def test_served_with_tools_and_json_schema(tiny_llada22: Path) -> None:
    """Over HTTP with editing on by default (2.2's): constrained requests (json_schema, forced
    tool calls) validate, streamed or not, sharing steps with editing rows; sampling with
    editing on is a 400 naming the parameter."""
    import asyncio

    import httpx

    from tests.e2e.server_harness import API_KEY, RemoteServer
    from tests.e2e.structured_workload import (
        gather_limited,
        required_tool_request,
        schema_request,
    )

    srv = RemoteServer(tiny_llada22, "--num-pages", "2048", "--max-running-requests", "16")

    async def workload(request) -> None:  # noqa: ANN001 - one of the structured requests
        client = srv.async_client(timeout=300)
        plain = [client.completions.create(model="tiny", prompt="hello", max_tokens=64)
                 for _ in range(4)]  # Levenshtein rows in the same steps
        await asyncio.gather(gather_limited(12, 8, lambda i: request(client, i, i % 2 == 0)),
                             *plain)

    try:
        asyncio.run(workload(schema_request))  # each validates its output
        asyncio.run(workload(required_tool_request))
        h = {"Authorization": f"Bearer {API_KEY}"}
        for bad, param in (({"temperature": 0.8}, "temperature"),
                           ({"logprobs": 2}, "logprobs")):
            r = httpx.post(srv.url + "/v1/completions", headers=h, timeout=60, json={
                "model": "tiny", "prompt": "hi", "max_tokens": 4, **bad})
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        ok = httpx.post(srv.url + "/v1/completions", headers=h, timeout=60, json={
            "model": "tiny", "prompt": "hi", "max_tokens": 4, "temperature": 0.8,
            "editing_threshold": "off"})
        assert ok.status_code == 200, ok.text
    finally:
        assert srv.stop() == 0
