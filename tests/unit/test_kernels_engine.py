"""The engine with the Triton kernels (interpreter on CPU) gives the torch path's greedy tokens;
the benchmarking acceptance oracle and the kernel flags behave as documented."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from server import LLM, SamplingParams  # noqa: E402
from server.decoding.diffusion import oracle_commits  # noqa: E402


def _generate(model: Path, max_tokens: int, **opts: object) -> tuple[list[int], LLM]:
    llm = LLM(str(model), device="cpu", num_pages=32, **opts)
    out = llm.generate(["Hello there"], SamplingParams(max_tokens=max_tokens, temperature=0.0))
    return out[0].token_ids, llm


def test_triton_kernels_give_the_torch_tokens(tiny_llada2_peaky: Path) -> None:
    ref, _ = _generate(tiny_llada2_peaky, 16, acceptance_backend="torch", moe_backend="torch")
    got, llm = _generate(tiny_llada2_peaky, 16, acceptance_backend="triton",
                         moe_backend="triton", enforce_eager=True)
    assert llm.engine.info.acceptance_backend == "triton"
    assert len(ref) == 16 and got == ref


def test_triton_kernels_give_the_torch_tokens_with_editing(tiny_llada2_peaky: Path) -> None:
    """LLaDA2.1 rows (quality and speed editing) beside a LLaDA2.0 row, one batch."""
    params = [SamplingParams(max_tokens=40, threshold=0.7, editing_threshold=0.5),
              SamplingParams(max_tokens=40, threshold=0.5, editing_threshold=0.0,
                             max_post_steps=4),
              SamplingParams(max_tokens=40)]
    prompts = ["Hello there", "def add(a, b):", "Hello there"]
    outs = {}
    for backend in ("torch", "triton"):
        llm = LLM(str(tiny_llada2_peaky), device="cpu", num_pages=64, moe_backend="torch",
                  acceptance_backend=backend, enforce_eager=True)
        outs[backend] = [o.token_ids for o in llm.generate(prompts, params)]
    assert outs["triton"] == outs["torch"] and all(len(t) > 0 for t in outs["torch"])


def test_oracle_schedule_averages_the_target() -> None:
    steps = [oracle_commits(2.55, n) for n in range(20)]
    assert min(steps) >= 1 and set(steps) == {2, 3}
    assert sum(steps) == int(20 * 2.55)  # every prefix is floor(n * tpf)


def test_simulated_tpf_commits_the_schedule(tiny_llada2: Path) -> None:
    """Flat random weights never pass 0.95 (one token a forward); the oracle commits its 2-3
    most confident positions a forward instead (the last forward of a block may commit fewer,
    and positions past max_tokens are not output)."""
    opts = dict(device="cpu", num_pages=32, acceptance_backend="torch", moe_backend="torch")
    params = SamplingParams(max_tokens=32, temperature=0.0)
    plain = LLM(str(tiny_llada2), **opts).generate(["Hello there"], params)[0]
    oracle = LLM(str(tiny_llada2), simulate_tpf=2.55, **opts).generate(["Hello there"],
                                                                       params)[0]
    assert plain.stats is not None and oracle.stats is not None
    assert plain.stats.tokens_per_forward <= 1.05
    assert len(oracle.token_ids) == 32
    assert oracle.stats.steps <= -(-plain.stats.steps * 1.05 // 2)  # at least ~2x fewer
