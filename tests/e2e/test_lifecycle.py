"""Request lifecycle: aborts and finishes release every page; bad requests are refused cleanly;
the engine process serves the same tokens as the in-process engine; the offline API works."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from server import LLM, SamplingParams
from server.core import FinishReason, GenerateRequest
from server.engine.llm import engine_config
from server.engine.process import EngineProcess, EngineStartError
from tests.e2e.engine_harness import make_engine, make_prompt, run


def test_no_page_held_after_finish_and_abort(tiny_llada2: Path) -> None:
    engine = make_engine(tiny_llada2, max_running_requests=3, num_pages=64)
    for i in range(6):
        ids = make_prompt(tiny_llada2, 30 + 11 * i, seed=i)
        engine.add_request(GenerateRequest(f"r{i}", tuple(ids), SamplingParams(max_tokens=80)))
    for _ in range(4):
        engine.step()
    running = [s.rid for s in engine.scheduler.running]
    waiting = [s.rid for s in engine.scheduler.waiting]
    assert running and waiting and engine.kv.pool.num_used > 0
    for rid in (running[0], waiting[-1]):
        out = engine.abort(rid)
        assert out is not None and out.finished and out.finish_reason is FinishReason.ABORT
    assert engine.abort("no-such-request") is None
    while engine.has_work():
        engine.step()
    pool = engine.kv.pool
    assert pool.num_used == 0
    assert pool.num_free + pool.num_cached == pool.num_pages
    assert all(pool.ref_count(p) == 0 for p in range(pool.num_pages))


def test_invalid_requests_are_refused_and_others_go_on(tiny_llada2: Path) -> None:
    engine = make_engine(tiny_llada2, max_model_len=256, num_pages=64)
    good = make_prompt(tiny_llada2, 10, seed=1)
    with pytest.raises(ValueError, match="empty"):
        engine.add_request(GenerateRequest("e", (), SamplingParams()))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.add_request(GenerateRequest("v", (10**9,), SamplingParams()))
    with pytest.raises(ValueError, match="maximum context length is 256 tokens"):
        engine.add_request(GenerateRequest("l", tuple(good), SamplingParams(max_tokens=250)))
    small = make_engine(tiny_llada2, num_pages=2)  # the context is lowered to the pool: 64
    with pytest.raises(ValueError, match="maximum context length is 64 tokens"):
        small.add_request(GenerateRequest("p", tuple(good), SamplingParams(max_tokens=100)))
    result = run(engine, [("ok", good, SamplingParams(max_tokens=20))])
    assert len(result.tokens["ok"]) == 20 and engine.kv.pool.num_used == 0


def test_engine_process_matches_in_process(tiny_llada2: Path) -> None:
    reqs = [(f"r{i}", make_prompt(tiny_llada2, 9 + 17 * i, seed=i), SamplingParams(max_tokens=40))
            for i in range(5)]
    local = run(make_engine(tiny_llada2), reqs)
    got: dict[str, list[int]] = {rid: [] for rid, _, _ in reqs}
    done = threading.Event()
    finished: set[str] = set()

    def on_step(outputs: list, stats: object) -> None:
        for o in outputs:
            got[o.rid].extend(o.new_token_ids)
            if o.finished:
                finished.add(o.rid)
        if len(finished) == len(reqs):
            done.set()

    proc = EngineProcess(engine_config(str(tiny_llada2), num_pages=256), on_step)
    try:
        assert proc.info.mode == "diffusion" and proc.is_alive()
        for rid, ids, params in reqs:
            proc.add_request(GenerateRequest(rid, tuple(ids), params))
        assert done.wait(120)
    finally:
        proc.shutdown()
    assert got == local.tokens
    assert not proc.is_alive()


def test_engine_process_reports_start_errors(tmp_path: Path) -> None:
    with pytest.raises(EngineStartError, match="not a model directory|config.json"):
        EngineProcess(engine_config(str(tmp_path / "missing")), lambda o, s: None)


def test_offline_llm_generate(tiny_llada2_peaky: Path) -> None:
    llm = LLM(str(tiny_llada2_peaky), num_pages=256)
    outs = llm.generate(["def add(a, b):", "Hello"], SamplingParams(max_tokens=24))
    assert [o.finish_reason for o in outs] in (["length", "length"], ["length", "stop"],
                                              ["stop", "length"], ["stop", "stop"])
    for o in outs:
        assert o.prompt_token_ids and len(o.token_ids) <= 24
        assert o.text == llm.tokenizer.decode(o.token_ids)
        assert o.stats is not None and o.stats.steps >= 1
    ids_out = llm.generate([outs[0].prompt_token_ids], SamplingParams(max_tokens=24))[0]
    assert ids_out.token_ids == outs[0].token_ids  # text and id prompts agree
    # a stop string ends the text before it and never shows it
    text = outs[0].text
    if len(text) > 6:
        stop = text[3:6]
        cut = llm.generate(["def add(a, b):"], SamplingParams(max_tokens=24, stop=(stop,)))[0]
        assert cut.text == text[: text.index(stop)] and cut.finish_reason == "stop"
    bad = llm.generate([[10**9]], SamplingParams(max_tokens=4))[0]
    assert bad.finish_reason == "error" and "vocabulary" in (bad.error or "")


def test_seeded_sampling_is_reproducible_across_batches(tiny_llada2_peaky: Path) -> None:
    d = tiny_llada2_peaky
    prompt = make_prompt(d, 21, seed=9)
    sampled = SamplingParams(max_tokens=50, temperature=0.9, top_p=0.95, top_k=50, seed=1234)
    alone = run(make_engine(d), [("s", prompt, sampled)]).tokens["s"]
    crowd = [(f"o{i}", make_prompt(d, 5 + 9 * i, seed=50 + i),
              SamplingParams(max_tokens=40, temperature=1.0, seed=i)) for i in range(6)]
    batched = run(make_engine(d), [*crowd[:3], ("s", prompt, sampled), *crowd[3:]], stagger=1)
    assert batched.tokens["s"] == alone
    other = SamplingParams(max_tokens=50, temperature=0.9, top_p=0.95, top_k=50, seed=99)
    assert run(make_engine(d), [("t", prompt, other)]).tokens["t"] != alone
    greedy = run(make_engine(d), [("g", prompt, SamplingParams(max_tokens=50))]).tokens["g"]
    assert greedy != alone
