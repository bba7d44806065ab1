"""Torch reference of confidence-threshold acceptance for a batch of active blocks.

Rule per block (llada2-spec §7.1, with the engine's guard): the mask id is never a candidate;
every undecided position gets a token (argmax, or a sample) and its confidence (its probability);
commit all undecided positions with confidence > threshold if there are at least k of them,
otherwise the min(k, #undecided) most confident. Every call commits >= 1 token per block that
has an undecided position, so a block finishes in at most B calls.

With `edits` (LLaDA2.1 token-to-token editing, llada2x-decoding.md §1.2 step 5) the same
(token, confidence) pairs also rewrite editable positions — generated, not masked at the top of
the step — whose token differs and whose confidence is above the row's editing threshold. The
two sets are disjoint (an undecided position is never editable).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class SamplingBatch:
    """Rows with temperature > 0 are sampled with their own generator (None: global RNG)."""

    temperature: list[float]
    top_k: list[int]
    top_p: list[float]
    generators: list[torch.Generator | None]


@dataclass(slots=True)
class EditBatch:
    threshold: torch.Tensor  # [S] fp32; +inf turns editing off for the row (never 0: maximal)
    editable: torch.Tensor  # [S, B] bool: generated positions not masked at the top of the step
    edited: torch.Tensor  # [S, B] bool, written: positions rewritten by an edit this step


def accept_blocks(
    logits: torch.Tensor,  # [S, B, V] fp32 (scratch: modified)
    block_ids: torch.Tensor,  # [S, B] long, updated in place
    undecided: torch.Tensor,  # [S, B] bool
    threshold: torch.Tensor,  # [S] fp32
    min_commit: torch.Tensor,  # [S] long
    mask_id: int,
    sampling: SamplingBatch | None = None,
    edits: EditBatch | None = None,
    rows: torch.Tensor | None = None,  # [S] long: block s is block_ids[rows[s]] (see below)
) -> torch.Tensor:  # committed [S, B] bool
    """With `rows`, `block_ids` is a table [N, B] of blocks (the engine's device-resident
    canvases) and block s of the batch is its row rows[s], read and rewritten in place; the
    other rows are untouched."""
    logits[..., mask_id] = -torch.inf
    tokens, conf = _choose(logits, sampling)  # [S, B] each
    return commit_chosen(tokens, conf, block_ids, undecided, threshold, min_commit, edits,
                         rows)


def commit_chosen(
    tokens: torch.Tensor,  # [S, B] long: each position's candidate
    conf: torch.Tensor,  # [S, B] fp32: its confidence
    block_ids: torch.Tensor,  # [S, B] long, updated in place
    undecided: torch.Tensor,  # [S, B] bool
    threshold: torch.Tensor,  # [S] fp32
    min_commit: torch.Tensor,  # [S] long
    edits: EditBatch | None = None,
    rows: torch.Tensor | None = None,  # [S] long: as in `accept_blocks`
) -> torch.Tensor:  # committed [S, B] bool
    """The rule after the choice: edits, then threshold commits with the min-commit guard."""
    if rows is not None:
        blocks = block_ids[rows]  # [S, B]
        committed = commit_chosen(tokens, conf, blocks, undecided, threshold, min_commit, edits)
        block_ids[rows] = blocks
        return committed
    if edits is not None:
        edits.edited.copy_(edits.editable & ~undecided & (tokens != block_ids)
                           & (conf > edits.threshold[:, None]))
        block_ids.copy_(torch.where(edits.edited, tokens, block_ids))
    conf = conf.masked_fill(~undecided, -torch.inf)
    above = (conf > threshold[:, None]) & undecided
    k = torch.minimum(min_commit, undecided.sum(1))  # [S]
    k_max = int(k.max()) if k.numel() else 0
    fallback = torch.zeros_like(undecided)
    if k_max > 0:
        top = conf.topk(k_max, dim=1).indices  # [S, k_max], most confident first
        rank_ok = torch.arange(k_max, device=k.device)[None, :] < k[:, None]
        fallback.scatter_(1, top, rank_ok)
    committed = torch.where((above.sum(1) >= k)[:, None], above, fallback) & undecided
    block_ids.copy_(torch.where(committed, tokens, block_ids))
    return committed


def _choose(logits: torch.Tensor, sampling: SamplingBatch | None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(token [S, B], confidence [S, B]): greedy rows by argmax, others by sampling."""
    lse = torch.logsumexp(logits.float(), dim=-1)  # [S, B]: fp32 whatever the logits' dtype
    best, tokens = logits.max(dim=-1)
    conf = torch.exp(best.float() - lse)  # softmax probability of the argmax
    if sampling is None:
        return tokens, conf
    for i, temp in enumerate(sampling.temperature):
        if temp > 0:
            tokens[i], conf[i] = sample_rows(logits[i], temp, sampling.top_k[i],
                                             sampling.top_p[i], sampling.generators[i])
    return tokens, conf


def sample_rows(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V] → (sampled token [B], its probability under the filtered distribution).
    Order (spec §7.3): temperature, top-k, top-p (smallest prefix with mass > p; top-1 kept)."""
    x = logits / temperature if temperature != 1.0 else logits.clone()
    if 0 < top_k < x.shape[-1]:
        kth = x.topk(top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, -torch.inf)
    if top_p < 1.0:
        sorted_x, order = x.sort(dim=-1, descending=True)
        cum = sorted_x.softmax(-1).cumsum(-1)
        drop = cum - sorted_x.softmax(-1) > top_p  # mass before this token already exceeds p
        drop[..., 0] = False
        x = x.masked_fill(drop.scatter(-1, order, drop), -torch.inf)
    probs = x.softmax(-1)  # [B, V]
    tok = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tok, probs.gather(-1, tok[:, None]).squeeze(-1)
