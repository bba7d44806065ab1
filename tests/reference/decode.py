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


def cut_after_eos(answer: list[int], eos: set[int]) -> list[int]:
    """The answer up to and including its first EOS (spec: the output ends there)."""
    for i, t in enumerate(answer):
        if t in eos:
            return answer[: i + 1]
    return answer


def reference_generate(model: ReferenceModel, prompt_ids: list[int], gen_length: int, *,
                       block_length: int = 32, threshold: float = 0.95, mask_id: int,
                       eos_ids: Sequence[int], min_commit: int = 1,
                       logprobs: dict[int, torch.Tensor] | None = None) -> list[int]:
    """Greedy block diffusion. Engine rules shared with it: the mask id is never a candidate
    (its logit is −inf), and prompt positions never change. `logprobs`, if given, receives for
    each output index the log-softmax [V] of the step that committed it."""
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
            if logprobs is not None:
                for i in commit.nonzero()[:, 0].tolist():
                    logprobs[lo + i - P] = logits[i].log_softmax(-1)
        if any(int(t) in eos for t in x[P:hi]):
            break
    return cut_after_eos(x[P : P + gen_length].tolist(), eos)


def reference_generate_editing(model: ReferenceModel, prompt_ids: list[int], gen_length: int,
                               *, block_length: int = 32, threshold: float,
                               editing_threshold: float, max_post_steps: int, mask_id: int,
                               eos_ids: Sequence[int], min_commit: int = 1,
                               forwards: list[tuple[int, bool]] | None = None,
                               margins: list[float] | None = None,
                               logprobs: dict[int, torch.Tensor] | None = None) -> list[int]:
    """Greedy LLaDA2.1 joint decoding (llada2x-decoding.md §1.2–1.8, the R21 loop): per
    iteration, mask-to-token on the masked positions (threshold, top-`min_commit` fallback) and
    token-to-token edits on the generated, non-masked positions of the block (argmax differs,
    probability > `editing_threshold`). A block ends on an iteration that starts mask-free and
    edits nothing, or — before forwarding — once more than `max_post_steps` iterations started
    mask-free. Rule shared with the engine: the mask id is never a candidate (logit −inf).
    `forwards`, if given, receives (forwards, ended by the budget) of each block; `margins`
    the smallest distance of each iteration's decisions from their boundary (top-1 vs top-2
    logit where a token is written or may be, p vs each threshold it is compared with, the
    fallback's last taken vs first left confidence, relative): below ~1e-4 a cached engine
    may decide otherwise."""
    B, P = block_length, len(prompt_ids)
    n_blocks = -(-(P + gen_length) // B)
    N = n_blocks * B
    x = torch.tensor(list(prompt_ids) + [mask_id] * (N - P))
    visible = block_causal_visible(N, B)
    eos = set(eos_ids)
    for b in range(P // B, n_blocks):
        lo, hi = b * B, (b + 1) * B
        generated = torch.arange(lo, hi) >= P  # [B]: prompt positions are never touched
        post, n_forwards, budget_end = 0, 0, False
        while True:
            old = x[lo:hi].clone()
            masked = (old == mask_id) & generated  # [B]
            if not masked.any():
                post += 1
                if post > max_post_steps:
                    budget_end = True
                    break  # budget end, no forward
            logits = model.forward(x[:hi], visible[:hi, :hi])[lo:hi]  # [B, V]
            n_forwards += 1
            logits[:, mask_id] = -torch.inf
            conf, tok = torch.softmax(logits, dim=-1).max(dim=-1)  # [B] each
            commit = torch.zeros(B, dtype=torch.bool)
            gaps = [float("inf")]
            if masked.any():
                above = (conf > threshold) & masked
                k = min(min_commit, int(masked.sum()))
                if int(above.sum()) >= k:
                    commit = above
                else:
                    ranked = torch.where(masked, conf, -torch.inf).sort(descending=True).values
                    commit[torch.topk(torch.where(masked, conf, -torch.inf), k).indices] = True
                    if k < int(masked.sum()):  # relative: confidences may all be ~1/V
                        gaps.append(float((ranked[k - 1] - ranked[k]) / ranked[k - 1]))
                gaps.append(float((conf[masked] - threshold).abs().min()))
            edit = generated & ~masked & (conf > editing_threshold) & (tok != old)
            if margins is not None:  # argmax near-ties matter where a token is written
                top2 = logits.topk(2, dim=-1).values  # [B, 2]
                decided = commit | (generated & ~masked & (conf > editing_threshold))
                if decided.any():
                    gaps.append(float((top2[decided, 0] - top2[decided, 1]).min()))
                changed = generated & ~masked & (tok != old)
                if changed.any():
                    gaps.append(float((conf[changed] - editing_threshold).abs().min()))
                margins.append(min(gaps))
            x[lo:hi] = torch.where(commit | edit, tok, old)
            if logprobs is not None:  # the step that last wrote each position
                for i in (commit | edit).nonzero()[:, 0].tolist():
                    logprobs[lo + i - P] = logits[i].log_softmax(-1)
            if not masked.any() and not edit.any():
                break  # no-update end
        if forwards is not None:
            forwards.append((n_forwards, budget_end))
        if any(int(t) in eos for t in x[P:hi]):
            break
    return cut_after_eos(x[P : P + gen_length].tolist(), eos)


def reference_ar_greedy(model: ReferenceModel, prompt_ids: list[int], max_tokens: int, *,
                        eos_ids: Sequence[int],
                        logprobs: dict[int, torch.Tensor] | None = None) -> list[int]:
    """Plain causal greedy loop: full forward each step, argmax at the last position.
    `logprobs` receives each output index's next-token log-softmax [V]."""
    ids = list(prompt_ids)
    out: list[int] = []
    eos = set(eos_ids)
    while len(out) < max_tokens:
        logits = model.forward(torch.tensor(ids), block_causal_visible(len(ids), 1))
        t = int(logits[-1].argmax())
        if logprobs is not None:
            logprobs[len(out)] = logits[-1].log_softmax(-1)
        ids.append(t)
        out.append(t)
        if t in eos:
            break
    return out
