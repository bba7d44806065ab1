"""Plain reference decoder for LLaDA2.2 Levenshtein editing (docs/llada22.md, "The rule"): no
cache, batch 1, every forward recomputes [prompt + completed blocks + active block] with the
block-causal mask. Written from the page, step by step, independently of the engine
(`server/decoding/levenshtein.py`); the two must agree token for token.

Readings of the page that it leaves open (the most literal one is taken each time):
- p_i is the softmax with the excluded ids' logits at −inf (the mask id always; with editing
  off DELETE and SPLIT too), i.e. renormalised without them, as in the 2.0/2.1 references.
- Argmax ties (v_i, the scrub's and the anti-loop's "best candidate") go to the lowest id.
- Editing off (`editing_threshold=None`) is "the LLaDA2.0 rule" of the page's table: the plain
  threshold loop of `reference_generate` (fallback top-1, a block ends as soon as it holds no
  mask, no post-steps, no Levenshtein state), with DELETE/SPLIT excluded from the candidates.
  Its blocks are recorded in `forwards` with the end kind "filled".
- Anti-loop (step 8): "the best candidate other than that write" may equal the cell's current
  id (for a T2T cell); the cell then stays written with its own id. When every tried cell (at
  most 5, fewer if fewer were written) lands in `seen`, the last try is kept, and the resulting
  block goes into `seen` (already there). `seen` is only updated in non-final iterations (step
  8 is skipped in final rounds); an iteration that writes nothing always ends the block, so
  whether it is added does not matter.
- Stable end (step 10) compares ids only (with M empty at the top, equal ids imply no edit op,
  so the orig flags are equal too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from tests.reference.decode import block_causal_visible, cut_after_eos

ANTI_LOOP_TRIES = 5


class LogitsModel(Protocol):
    """`tests.reference.model.ReferenceModel`, or a scripted fake in the unit tests."""

    def forward(self, ids: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """ids [N], visible [N, N] (query i may see key j) → fp32 logits [N, V]."""
        ...


def reference_generate_levenshtein(
        model: LogitsModel, prompt_ids: list[int], gen_length: int, *,
        block_length: int = 32, threshold: float, editing_threshold: float | None,
        max_post_steps: int, mask_id: int, delete_id: int, split_id: int,
        eos_ids: Sequence[int], forwards: list[tuple[int, str]] | None = None,
        trace: list[dict] | None = None) -> list[int]:
    """Greedy LLaDA2.2 decoding. `editing_threshold` None: editing off (the 2.0 rule, DELETE
    and SPLIT never candidates). Returns x[P, P+gen_length) cut after its first EOS, decoding
    block after block and stopping after the first completed block whose generated cells hold
    an EOS (as `reference_generate_editing`). `forwards`, if given, receives per block
    (forwards, end kind): "stable" (step 10), "budget" (step 2; the engine spends one more
    forward there) or, editing off, "filled". `trace`, if given, receives one dict per
    iteration (see `_levenshtein_block`) and one per budget end (nothing with editing off)."""
    B, P = block_length, len(prompt_ids)
    n_blocks = -(-(P + gen_length) // B)
    N = n_blocks * B  # the grid always ends on a full block
    x = torch.tensor(list(prompt_ids) + [mask_id] * (N - P))
    visible = block_causal_visible(N, B)
    eos = set(eos_ids)
    for b in range(P // B, n_blocks):
        lo, hi = b * B, (b + 1) * B
        if editing_threshold is None:
            n, kind = _threshold_block(model, x, visible, lo, hi, P, threshold=threshold,
                                       excluded=[mask_id, delete_id, split_id],
                                       mask_id=mask_id)
        else:
            n, kind = _levenshtein_block(
                model, x, visible, b, lo, hi, P, threshold=threshold,
                editing_threshold=editing_threshold, max_post_steps=max_post_steps,
                mask_id=mask_id, delete_id=delete_id, split_id=split_id, trace=trace)
        done = x[max(lo, P):hi].tolist()
        assert not {mask_id, delete_id, split_id} & set(done), (b, done)
        if forwards is not None:
            forwards.append((n, kind))
        if any(t in eos for t in x[P:hi].tolist()):
            break
    return cut_after_eos(x[P : P + gen_length].tolist(), eos)


def _probs(model: LogitsModel, x: torch.Tensor, visible: torch.Tensor, lo: int, hi: int,
           excluded: Sequence[int]) -> torch.Tensor:
    """[B, V] fp32 softmax of the active block's logits, `excluded` ids' logits at −inf."""
    logits = model.forward(x[:hi], visible[:hi, :hi])[lo:hi].float().clone()  # [B, V]
    logits[:, list(excluded)] = -torch.inf
    return torch.softmax(logits, dim=-1)


def _best(probs_i: torch.Tensor, excluded: Sequence[int]) -> int:
    """The most probable id of one cell's [V] distribution outside `excluded` (ties: lowest)."""
    q = probs_i.clone()
    q[list(excluded)] = -1.0
    return int(q.argmax())


def _top(need: int, cells: list[int], p: list[float]) -> list[int]:
    """The `need` most confident of `cells` (ties: lower index first), in index order."""
    return sorted(sorted(cells, key=lambda i: (-p[i], i))[:need])


def _threshold_block(model: LogitsModel, x: torch.Tensor, visible: torch.Tensor, lo: int,
                     hi: int, P: int, *, threshold: float, excluded: Sequence[int],
                     mask_id: int) -> tuple[int, str]:
    """The LLaDA2.0 rule (editing off): commit masked cells with p > threshold, or the most
    confident one; the block ends once it holds no mask."""
    B = hi - lo
    n = 0
    for _ in range(B):
        cells = x[lo:hi].tolist()
        M = [i for i in range(B) if lo + i >= P and cells[i] == mask_id]
        if not M:
            break
        probs = _probs(model, x, visible, lo, hi, excluded)
        n += 1
        p_t, v_t = probs.max(dim=-1)
        p, v = p_t.tolist(), v_t.tolist()
        above = [i for i in M if p[i] > threshold]
        for i in above if above else _top(1, M, p):
            x[lo + i] = v[i]
    return n, "filled"


def _levenshtein_block(model: LogitsModel, x: torch.Tensor, visible: torch.Tensor, b: int,
                       lo: int, hi: int, P: int, *, threshold: float, editing_threshold: float,
                       max_post_steps: int, mask_id: int, delete_id: int, split_id: int,
                       trace: list[dict] | None) -> tuple[int, str]:
    """One block under docs/llada22.md "The rule"; the numbered comments are the page's steps.
    Updates x[lo:hi] in place; returns (forwards, end kind)."""
    B = hi - lo
    cap = B + max_post_steps + 2
    prompt = [lo + i < P for i in range(B)]  # prompt cells: never masks, never written, kept
    gen = [i for i in range(B) if not prompt[i]]
    cells = x[lo:hi].tolist()
    orig = [not prompt[i] and cells[i] == mask_id for i in range(B)]
    edit_ids = {delete_id, split_id}
    step, post, n_forwards = 0, 0, 0
    seen: set[tuple[int, ...]] = set()
    while True:
        top, top_orig = list(cells), list(orig)
        assert not edit_ids & {top[i] for i in gen}, "the scan consumes every edit id"
        # 1. Top
        M = [i for i in gen if top[i] == mask_id]
        o = sum(orig[i] for i in M)
        n_new = len(M) - o
        post = post + 1 if o == 0 else 0
        # 2. Budget end
        if not M and (post > max_post_steps or step >= cap):
            if trace is not None:
                trace.append({"block": b, "step": step, "post": post, "end": "budget"})
            return n_forwards, "budget"
        assert step < cap and n_forwards < cap, (step, n_forwards, cap)
        # 3. Forward (x[lo:hi] holds `top`)
        probs = _probs(model, x, visible, lo, hi, [mask_id])
        n_forwards += 1
        p_t, v_t = probs.max(dim=-1)  # first maximal index on ties
        p, v = p_t.tolist(), v_t.tolist()
        # 4. Final / closing round
        closing = step == cap - 1
        final = closing or (o == 0 and post >= max_post_steps)
        # 5. M2T
        if final or step >= B:
            m2t = list(M)
        else:
            need = 1 + n_new
            above = [i for i in M if p[i] > threshold]
            m2t = above if len(above) >= need else _top(min(need, len(M)), M, p)
        # 6. T2T
        t2t = [] if closing else [i for i in gen if i not in M and v[i] != top[i]
                                  and p[i] > editing_threshold]
        writes = {i: v[i] for i in sorted(m2t + t2t)}
        # 7. Final-round scrub
        scrubbed: dict[int, int | None] = {}
        if final:
            for i in list(writes):
                if writes[i] in edit_ids:
                    r = _best(probs[i], [mask_id, delete_id, split_id])
                    if r == top[i]:
                        del writes[i]
                        scrubbed[i] = None
                    else:
                        writes[i] = scrubbed[i] = r
        w = list(top)
        for i, t in writes.items():
            w[i] = t
        # 8. Anti-loop
        tries: list[tuple[int, int]] = []
        if not final:
            if writes and tuple(w) in seen:
                base = list(w)
                for i in sorted(writes, key=lambda i: (p[i], i))[:ANTI_LOOP_TRIES]:
                    alt = _best(probs[i], [mask_id, writes[i]])
                    w = list(base)
                    w[i] = alt
                    tries.append((i, alt))
                    if tuple(w) not in seen:
                        break
                # the accepted try, or the last one when all failed
                writes[tries[-1][0]] = tries[-1][1]
            seen.add(tuple(w))
        # 9. Scan
        new: list[int] = []
        new_orig: list[bool] = []
        for i in range(B):
            if prompt[i]:
                new.append(top[i])
                new_orig.append(False)
            elif w[i] == delete_id:
                pass
            elif w[i] == split_id:
                new += [mask_id, top[i]]  # the cell's id before this iteration's write
                new_orig += [False, top_orig[i]]
            else:
                new.append(w[i])
                new_orig.append(top_orig[i])
        new, new_orig = new[:B], new_orig[:B]
        new += [mask_id] * (B - len(new))
        new_orig += [False] * (B - len(new_orig))
        cells, orig = new, new_orig
        x[lo:hi] = torch.tensor(cells)
        # 10. Stable end
        stable = not M and cells == top
        if trace is not None:
            trace.append({"block": b, "step": step, "post": post, "M": M, "o": o,
                          "n_new": n_new, "final": final, "closing": closing, "m2t": m2t,
                          "t2t": t2t, "scrubbed": scrubbed, "anti_loop": tries,
                          "writes": dict(writes), "written": list(w), "top": top,
                          "block_ids": list(cells), "orig": list(orig), "v": v, "p": p,
                          "end": "stable" if stable else None})
        if stable:
            return n_forwards, "stable"
        step += 1
