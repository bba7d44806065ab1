"""The device-resident block table (`CanvasTable`): parameters beyond float64's exact range or
the block reach the device as the same rule, and rows come back when sequences leave."""

from __future__ import annotations

from pathlib import Path

from server import LLM
from server.core import SamplingParams
from server.decoding.diffusion import BlockDiffusion


def test_huge_min_commit_is_the_whole_block(tiny_llada2: Path) -> None:
    llm = LLM(str(tiny_llada2), device="cpu", num_pages=64)
    mode = llm.engine.mode
    assert isinstance(mode, BlockDiffusion)
    prompts = ["Hello there", "a"]
    whole = llm.generate(prompts, SamplingParams(max_tokens=40, ignore_eos=True,
                                                 min_commit=mode.block_size))
    huge = llm.generate(prompts, SamplingParams(max_tokens=40, ignore_eos=True,
                                                min_commit=1 << 70))
    assert [o.token_ids for o in huge] == [o.token_ids for o in whole]
    assert all(o.stats is not None and o.stats.steps == o.stats.blocks for o in huge)
    assert sorted(mode.table._free) == list(range(mode.table.canvas.shape[0]))
