"""Plain greedy reference decoders (llada2-spec §7.1, §7.3): batch 1, no cache, full recompute."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

Tensor = torch.Tensor


class LogitsModel(Protocol):
    """Anything with the ReferenceModel forward signature (tests may pass stubs)."""

    def forward(self, ids: Tensor, visible: Tensor, positions: Tensor | None = None) -> Tensor:
        ...


@dataclass
class Step:
    """One denoising step: the block decoded and the absolute positions committed."""

    block: int
    committed: list[int]


@dataclass
class DecodeStats:
    """Filled in by the decoders when passed as `stats=`; the return values stay plain lists."""

    forwards: int = 0
    steps: list[Step] = field(default_factory=list)  # diffusion only
    blocks: list[int] = field(default_factory=list)  # diffusion: blocks decoded, in order
    canvas: list[int] = field(default_factory=list)  # diffusion: final x[0:N], masks left as is


def block_causal_visible(n: int, block: int) -> Tensor:
    """[n, n] bool: query i sees key j iff j // block <= i // block (block=1: causal)."""
    blk = torch.arange(n) // block  # [n]
    return blk[None, :] <= blk[:, None]


def truncate_after_eos(tokens: list[int], eos_ids: Sequence[int]) -> list[int]:
    """Cut right after the first id in eos_ids (EOS kept)."""
    eos = set(eos_ids)
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


def reference_generate(model: LogitsModel, prompt_ids: list[int], gen_length: int, *,
                       block_length: int = 32, threshold: float = 0.95, mask_id: int,
                       eos_ids: Sequence[int], min_commit: int = 1,
                       stats: DecodeStats | None = None) -> list[int]:
    """§7.1 at temperature 0 with the engine's rules: the mask id is never predicted, prompt
    positions never change, >= 1 commit per step, stop after the block holding an EOS."""
    assert block_length >= 1 and gen_length >= 0 and min_commit >= 1
    stats = DecodeStats() if stats is None else stats
    B, P = block_length, len(prompt_ids)
    n_blocks = -(-(P + gen_length) // B)
    N = n_blocks * B  # §7.1: absolute grid, always ends with a full block
    x = torch.tensor(list(prompt_ids) + [mask_id] * (N - P), dtype=torch.long)  # [N]
    visible = block_causal_visible(N, B)  # [N, N]
    positions = torch.arange(N)  # [N]
    generated = positions >= P  # [N]; prompt positions are never active (rule 2)
    eos = set(eos_ids)
    for b in range(P // B, n_blocks):  # first block may hold the frozen prompt tail
        lo, hi = b * B, (b + 1) * B
        stats.blocks.append(b)
        while True:
            active = (x[lo:hi] == mask_id) & generated[lo:hi]  # [B]
            n_active = int(active.sum())
            if n_active == 0:
                break
            # full recompute of the prefix x[0:hi] with the block-causal mask (no cache)
            logits = model.forward(x[:hi], visible[:hi, :hi], positions[:hi])[lo:hi].float()
            stats.forwards += 1
            logits[:, mask_id] = -torch.inf  # rule 1: the mask id is never a candidate
            probs = torch.softmax(logits, dim=-1)  # [B, V] fp32 (§7.3, temperature 0)
            tok = probs.argmax(dim=-1)  # [B]
            conf = probs.gather(1, tok[:, None])[:, 0].masked_fill(~active, -torch.inf)  # [B]
            above = conf > threshold  # [B]; non-active are -inf, never above
            if int(above.sum()) >= min_commit:
                commit = above
            else:  # fallback: the min(min_commit, #active) most confident active positions
                commit = torch.zeros(B, dtype=torch.bool)
                commit[torch.topk(conf, min(min_commit, n_active)).indices] = True
            assert bool(commit.any()) and not bool((commit & ~active).any())
            x[lo:hi] = torch.where(commit, tok, x[lo:hi])
            stats.steps.append(Step(b, (lo + commit.nonzero()[:, 0]).tolist()))
        if eos and any(int(t) in eos for t in x[P:hi]):  # rule 3: stop after this block
            break
    stats.canvas = x.tolist()
    answer = truncate_after_eos(x[P : P + gen_length].tolist(), eos_ids)  # rule 4
    assert mask_id not in answer
    return answer


def reference_ar_greedy(model: LogitsModel, prompt_ids: list[int], max_tokens: int, *,
                        eos_ids: Sequence[int], stats: DecodeStats | None = None) -> list[int]:
    """Causal greedy loop: full forward every step, argmax of the last position (no exclusions);
    stops after emitting an id in eos_ids (kept) or after max_tokens tokens."""
    stats = DecodeStats() if stats is None else stats
    ids = list(prompt_ids)
    out: list[int] = []
    eos = set(eos_ids)
    while len(out) < max_tokens:
        n = len(ids)
        logits = model.forward(torch.tensor(ids, dtype=torch.long), block_causal_visible(n, 1),
                               torch.arange(n))  # [n, V]
        stats.forwards += 1
        t = int(logits[-1].argmax())
        ids.append(t)
        out.append(t)
        if t in eos:
            break
    return out
