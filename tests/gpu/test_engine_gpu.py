"""Engine on CUDA: Triton kernels give the torch path's greedy tokens; denoise CUDA graphs give
the eager tokens and are actually replayed."""

from __future__ import annotations

from pathlib import Path

import pytest

from server import LLM, SamplingParams

pytestmark = pytest.mark.gpu
PROMPTS = ["Hello there", "The quick brown fox jumps over the lazy dog", "a", "Once upon"]


def _run(model: Path, **opts: object) -> tuple[list[list[int]], LLM]:
    llm = LLM(str(model), device="cuda", dtype="float32", num_pages=256, **opts)
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=64))
    return [o.token_ids for o in outs], llm


def test_triton_path_equals_torch_path(tiny_llada2_peaky: Path) -> None:
    ref, _ = _run(tiny_llada2_peaky, acceptance_backend="torch", moe_backend="torch",
                  enforce_eager=True)
    got, llm = _run(tiny_llada2_peaky, acceptance_backend="triton", moe_backend="triton",
                    enforce_eager=True)
    assert llm.engine.info.acceptance_backend == "triton"
    assert got == ref


def test_cuda_graphs_equal_eager(tiny_llada2_peaky: Path) -> None:
    eager, _ = _run(tiny_llada2_peaky, moe_backend="triton", enforce_eager=True)
    graphed, llm = _run(tiny_llada2_peaky, moe_backend="triton")
    runner = llm.engine.runner
    assert runner.uses_graphs
    assert runner.enabled and runner.replays > 0  # type: ignore[attr-defined]
    assert graphed == eager
