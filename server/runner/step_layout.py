"""The step layout CUDA graphs replay, as pure functions of a batch.

Every forward is a sequence of *query blocks* of `attn_block` rows: a diffusion segment (a
prefill chunk, a folded commit block, the active block) is whole blocks of B on the block grid;
an autoregressive row is a block of 1. Under block-causal attention every row of query block i
sees exactly the key positions [0, end of block i) of its sequence, so a step is described by
per-block (page-table row, key length) whatever mix of segments it holds: block completions,
LLaDA2.1 post-steps, 2.0 and 2.1 rows and prefill chunks all ride in one layout. A graph is
keyed by the number of query blocks alone, padded up to the next bucket; buckets grow by at
most 1/16, so padding stays under 6 % of the rows forwarded."""

from __future__ import annotations

from collections.abc import Sequence

from server.core import Batch

EXACT_UP_TO = 16  # every block count up to this has its own bucket
GROWTH = 16  # beyond it, each bucket is at most 1/GROWTH larger than the one before


def graph_buckets(max_blocks: int) -> tuple[int, ...]:
    """Block counts graphs are captured for: 1..16, then steps of ceil(b/16), up to
    `max_blocks` (always the last bucket)."""
    out, b = [], 1
    while b < max_blocks:
        out.append(b)
        b += 1 if b < EXACT_UP_TO else -(-b // GROWTH)
    return (*out, max_blocks)


def query_blocks(batch: Batch, attn_block: int) -> int:
    """Query blocks of a batch (each segment is whole blocks on the grid)."""
    for s in batch.segments:
        assert s.start % attn_block == 0 and s.num_tokens % attn_block == 0, (s.start, s.end)
    return batch.num_tokens // attn_block


def graph_bucket(num_blocks: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket holding `num_blocks`; None (the step runs eagerly) beyond the
    largest or for an empty step."""
    if num_blocks < 1:
        return None
    return next((b for b in buckets if b >= num_blocks), None)
