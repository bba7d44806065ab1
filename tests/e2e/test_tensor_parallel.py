"""Tensor/expert parallelism on CPU (gloo, two engine processes): greedy tokens equal the
single-process engine's token for token, in both decoding modes, and `unmask serve
--tensor-parallel-size 2` serves them over HTTP and leaves no rank behind on shutdown."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from server.core import SamplingParams
from server.engine.llm import LLM
from server.model.config import ModelConfig
from tests.e2e.engine_harness import make_engine, make_prompt, run
from tests.e2e.server_harness import RemoteServer


def _requests(model_dir: Path) -> list[tuple]:
    # prompts inside one page, on a page boundary and across several; staggered arrivals
    return [(f"r{i}", make_prompt(model_dir, P, seed=10 + i), SamplingParams(max_tokens=m))
            for i, (P, m) in enumerate([(1, 33), (31, 40), (32, 64), (70, 45), (100, 20)])]


@pytest.mark.parametrize("weights", ["tiny_llada2_peaky", "tiny_ling2"])
def test_tp2_greedy_equals_tp1(weights: str, request: pytest.FixtureRequest) -> None:
    model_dir: Path = request.getfixturevalue(weights)
    mcfg = ModelConfig.from_file(model_dir / "config.json")
    reqs = _requests(model_dir)
    single = run(make_engine(model_dir, max_running_requests=4), reqs, stagger=2)
    engine = make_engine(model_dir, max_running_requests=4, tensor_parallel_size=2)
    try:
        # rank 0 really holds half: its KV heads, attention heads and routed experts
        assert engine.runner.kv.k.shape[2] == mcfg.num_key_value_heads // 2
        layer = engine.runner.model.model.layers[mcfg.num_hidden_layers - 1]
        assert layer.attention.nh == mcfg.num_attention_heads // 2
        assert layer.mlp.experts.w13.shape[0] == mcfg.num_experts // 2
        parallel = run(engine, reqs, stagger=2)
        assert engine.runner.workers.dead() == []
    finally:
        engine.runner.close()
    assert parallel.tokens == single.tokens
    assert parallel.reasons == single.reasons
    assert all(len(t) > 0 for t in parallel.tokens.values())


def test_tp_size_beyond_kv_heads_is_refused(tiny_llada2: Path) -> None:
    nkv = ModelConfig.from_file(tiny_llada2 / "config.json").num_key_value_heads
    with pytest.raises(ValueError, match="exceeds num_key_value_heads"):
        make_engine(tiny_llada2, tensor_parallel_size=2 * nkv)


def test_serve_tp2(tiny_llada2_peaky: Path) -> None:
    prompts = ["def fib(n):", "The capital of France is"]
    want = [o.text for o in LLM(str(tiny_llada2_peaky), device="cpu", num_pages=256)
            .generate(prompts, SamplingParams(max_tokens=40))]
    srv = RemoteServer(tiny_llada2_peaky, "--tensor-parallel-size", "2", "--num-pages", "256")
    try:
        client = srv.client()
        got = [client.completions.create(model="tiny", prompt=p, max_tokens=40, temperature=0)
               .choices[0].text for p in prompts]
    finally:
        t0 = time.monotonic()
        code = srv.stop()
        stopped_in = time.monotonic() - t0
    assert got == want
    assert code == 0 and stopped_in < 15
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # every process of the server's session is gone
        try:
            os.killpg(srv.proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    pytest.fail("a process of the tensor-parallel server outlived it")
