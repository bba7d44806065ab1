"""The computation the denoise CUDA graphs capture (static buffers, padded batch bucket, static
key range), run without a graph on CPU, gives the eager engine's greedy tokens."""

from __future__ import annotations

from pathlib import Path

from server import LLM, SamplingParams
from server.runner.cuda_graphs import GraphedDenoiseRunner
from server.runner.model_runner import ModelRunner

PROMPTS = ["Hello there", "The quick brown fox jumps over", "a"]  # 3 rows → bucket 4


def test_static_denoise_forward_matches_eager(tiny_llada2_peaky: Path) -> None:
    params = SamplingParams(max_tokens=40)
    ref = LLM(str(tiny_llada2_peaky), device="cpu", num_pages=64).generate(PROMPTS, params)
    llm = LLM(str(tiny_llada2_peaky), device="cpu", num_pages=64, enforce_eager=False)
    eng = llm.engine
    assert isinstance(eng.runner, ModelRunner)  # CPU: no graphs whatever the flag says
    runner = GraphedDenoiseRunner(eng.runner, eng.info.block_size, eng.max_model_len,
                                  capture=False)
    eng.runner = runner  # type: ignore[assignment]
    got = llm.generate(PROMPTS, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in ref]
    assert runner.replays > 0 and (4, 256) in runner.graphs  # padded bucket was used


def test_enforce_eager_is_accepted_on_cpu(tiny_llada2: Path) -> None:
    llm = LLM(str(tiny_llada2), device="cpu", num_pages=16, enforce_eager=True)
    assert isinstance(llm.engine.runner, ModelRunner)
