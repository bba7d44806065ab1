"""Plain reference decoders (llada2-spec §7.1): no KV cache, batch 1, a full-sequence forward
with an explicit mask at every step."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tests.reference.model import ReferenceModel


def block_causal_visible(n: int, block: int) -> torch.Tensor:
    """[n, n] bool: query i sees key j iff j // block <= i // block (block 1 = causal)."""
    blk = torch.arange(n) // block
    return blk[None, :] <= blk[:, None]


def reference_generate(model: ReferenceModel, prompt_ids: list[int], gen_length: int, *,
                       block_length: int = 32, threshold: float = 0.95, mask_id: int,
                       eos_ids: Sequence[int], min_commit: int = 1) -> list[int]:
    """Greedy block diffusion. Engine rules shared with it: the mask id is never a candidate
    (its logit is −inf), and prompt positions never change."""
    B, P = block_length, len(prompt_ids)
    n_blocks = -(-(P + gen_length) // B)
    N = n_blocks * B  # the grid always ends on a full block
    x = torch.tensor(list(prompt_ids) + [mask_id] * (N - P))
    visible = block_causal_visible(N, B)
    eos = set(eos_ids)
    for b in range(P // B, n_blocks):
        lo, hi = b * B, (b + 1) * B
        for _ in range(B):
            active = (x[lo:hi] == mask_id) & (torch.arange(lo, hi) >= P)  # [B]
            if not active.any():
                break
            logits = model.forward(x[:hi], visible[:hi, :hi])[lo:hi]  # [B, V]
            logits[:, mask_id] = -torch.inf
            probs = torch.softmax(logits, dim=-1)
            conf, tok = probs.max(dim=-1)
            conf = torch.where(active, conf, -torch.inf)
            k = min(min_commit, int(active.sum()))
            above = (conf > threshold) & active
            if int(above.sum()) >= k:
                commit = above
            else:
                commit = torch.zeros(B, dtype=torch.bool)
                commit[torch.topk(conf, k).indices] = True
            x[lo:hi] = torch.where(commit, tok, x[lo:hi])
        if any(int(t) in eos for t in x[P:hi]):
            break
    answer = x[P : P + gen_length].tolist()
    for i, t in enumerate(answer):
        if t in eos:
            return answer[: i + 1]
    return answer


def reference_ar_greedy(model: ReferenceModel, prompt_ids: list[int], max_tokens: int, *,
                        eos_ids: Sequence[int]) -> list[int]:
    """Plain causal greedy loop: full forward each step, argmax at the last position."""
    ids = list(prompt_ids)
    out: list[int] = []
    eos = set(eos_ids)
    while len(out) < max_tokens:
        logits = model.forward(torch.tensor(ids), block_causal_visible(len(ids), 1))
        t = int(logits[-1].argmax())
        ids.append(t)
        out.append(t)
        if t in eos:
            break
    return out
