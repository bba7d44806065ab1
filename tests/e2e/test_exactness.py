"""The engine's greedy output equals the plain reference decoder token for token (float32):
every prompt/max_tokens shape, flat and peaky weights, concurrency 1..16 with staggered
arrivals, prefix-cache hits, preemption, and the Ling-2.0 AR checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.core import FinishReason, SamplingParams
from server.model.specials import read_special_ids
from tests.e2e.engine_harness import make_engine, make_prompt, reference, run

PROMPT_LENS = [1, 5, 31, 32, 33, 64, 100]
MAX_TOKENS = [1, 31, 32, 33, 100]


def check(model_dir: Path, reqs: list, result, eos: tuple[int, ...], ar: bool = False) -> None:
    for rid, ids, params in reqs:
        stop = eos + tuple(params.stop_token_ids)
        want = reference(model_dir, ids, params.max_tokens, stop, ar=ar)
        assert result.tokens[rid] == want, f"{rid}: prompt {len(ids)}, max {params.max_tokens}"
        hit_stop = bool(want) and want[-1] in stop
        expect = FinishReason.STOP if hit_stop else FinishReason.LENGTH
        assert result.reasons[rid] == expect, rid


@pytest.mark.parametrize("weights", ["tiny_llada2", "tiny_llada2_peaky"])
def test_shape_matrix_at_concurrency_16(weights: str, request: pytest.FixtureRequest) -> None:
    model_dir: Path = request.getfixturevalue(weights)
    eos = read_special_ids(model_dir).eos_ids
    reqs = [(f"p{P}-m{m}", make_prompt(model_dir, P, seed=P * 1000 + m),
             SamplingParams(max_tokens=m))
            for P in PROMPT_LENS for m in MAX_TOKENS]
    engine = make_engine(model_dir, max_running_requests=16)
    result = run(engine, reqs, stagger=1)
    assert result.max_running == 16
    check(model_dir, reqs, result, eos)
    assert engine.kv.pool.num_used == 0


@pytest.mark.parametrize("concurrency", [1, 2, 5, 16])
def test_concurrency_levels_staggered(tiny_llada2_peaky: Path, concurrency: int) -> None:
    model_dir = tiny_llada2_peaky
    eos = read_special_ids(model_dir).eos_ids
    reqs = [(f"r{i}", make_prompt(model_dir, 7 + 13 * i, seed=i), SamplingParams(max_tokens=90))
            for i in range(16)]
    engine = make_engine(model_dir, max_running_requests=concurrency)
    result = run(engine, reqs, stagger=1)
    assert result.max_running == concurrency
    check(model_dir, reqs, result, eos)


def test_stop_token_ids_and_tokens_per_forward(tiny_llada2_peaky: Path) -> None:
    """A stop id the model does produce ends the request exactly where the reference stops;
    the peaky weights commit several tokens per forward."""
    model_dir = tiny_llada2_peaky
    eos = read_special_ids(model_dir).eos_ids
    prompt = make_prompt(model_dir, 20, seed=5)
    free = reference(model_dir, prompt, 64, eos)
    stop_id = free[40]  # a token the model emits mid-output
    reqs = [("s", prompt, SamplingParams(max_tokens=64, stop_token_ids=(stop_id,)))]
    engine = make_engine(model_dir)
    result = run(engine, reqs)
    check(model_dir, reqs, result, eos)
    assert result.tokens["s"][-1] == stop_id and len(result.tokens["s"]) <= 41
    r2 = run(make_engine(model_dir), [("t", prompt, SamplingParams(max_tokens=64))])
    assert 64 / r2.steps > 1.5  # several tokens committed per forward


def test_prefix_cache_hits(tiny_llada2: Path) -> None:
    model_dir = tiny_llada2
    eos = read_special_ids(model_dir).eos_ids
    shared = make_prompt(model_dir, 96, seed=42)
    reqs = [(f"h{i}", make_prompt(model_dir, 96 + 7 * i, seed=100 + i, prefix=shared),
             SamplingParams(max_tokens=40)) for i in range(6)]
    engine = make_engine(model_dir)
    first = run(engine, reqs[:1])
    rest = run(engine, reqs[1:], stagger=2)
    assert first.prefix_hits == 0 and rest.prefix_hits >= 5 * 96
    check(model_dir, reqs[:1], first, eos)
    check(model_dir, reqs[1:], rest, eos)
    # the same prompt again is served from the cache, generated blocks included
    again = run(engine, [("h0-again", reqs[0][1], reqs[0][2])])
    assert again.tokens["h0-again"] == first.tokens["h0"]


def test_preemption_keeps_outputs_identical(tiny_llada2: Path) -> None:
    model_dir = tiny_llada2
    reqs = [(f"q{i}", make_prompt(model_dir, 40 + 9 * i, seed=200 + i),
             SamplingParams(max_tokens=90, ignore_eos=True)) for i in range(8)]
    engine = make_engine(model_dir, num_pages=16, max_running_requests=8)
    result = run(engine, reqs, stagger=1)
    assert result.preempted > 0
    for rid, ids, _ in reqs:  # ignore_eos: the reference runs without stop ids
        assert result.tokens[rid] == reference(model_dir, ids, 90, ()), rid
    assert engine.kv.pool.num_used == 0


def test_ar_checkpoint_matches_causal_greedy_loop(tiny_ling2: Path) -> None:
    model_dir = tiny_ling2
    eos = read_special_ids(model_dir).eos_ids
    reqs = [(f"a{i}", make_prompt(model_dir, P, seed=300 + i), SamplingParams(max_tokens=m))
            for i, (P, m) in enumerate([(1, 20), (5, 33), (32, 40), (33, 1), (70, 50)])]
    for concurrency in (1, 5):
        engine = make_engine(model_dir, max_running_requests=concurrency, num_pages=12)
        result = run(engine, reqs, stagger=2)
        check(model_dir, reqs, result, eos, ar=True)
        assert engine.kv.pool.num_used == 0
