"""LLaDA2.2 Levenshtein editing for one row of the active block: the per-iteration rule of
docs/llada22.md (M2T, T2T, DELETE/SPLIT edit tokens, final and closing rounds, the
deterministic anti-loop rule, the scan, stable and budget ends). The mode calls `iterate` once
per forward of the row; the block's state lives in `Sequence.levenshtein`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from server.core import Editing, LevenshteinState, Sequence
from server.transfer import read

ANTI_LOOP_TRIES = 5


@dataclass(frozen=True)
class EditIds:
    mask: int
    delete: int
    split: int


@dataclass(frozen=True)
class Choice:
    """Per cell of one forward (mask id excluded): candidate, its probability, the runner-up,
    and the best candidate that is no edit token (for the final-round scrub)."""

    v: list[int]
    p: list[float]
    second: list[int]
    plain: list[int]


def choose(logits: torch.Tensor, ids: EditIds) -> list[Choice]:
    """logits [R, B, V] of R editing rows (processed) → one host read of what the rule needs,
    per row. Every argmax tie goes to the lowest id."""
    x = logits.float().clone()
    x[..., ids.mask] = -torch.inf
    probs = x.softmax(-1)  # [R, B, V]
    v = probs.argmax(-1)  # [R, B]
    p = probs.gather(-1, v[..., None])[..., 0]  # [R, B]
    probs[..., ids.mask] = -1.0  # excluded ids rank below every probability
    second = probs.scatter(-1, v[..., None], -1.0).argmax(-1)  # [R, B]: best other than v
    probs[..., [ids.delete, ids.split]] = -1.0
    plain = probs.argmax(-1)  # [R, B]: best that is no edit id
    host = read(torch.stack([v.to(p.dtype), second.to(p.dtype), plain.to(p.dtype), p], -1))
    return [Choice([int(c[0]) for c in row], [c[3] for c in row], [int(c[1]) for c in row],
                   [int(c[2]) for c in row]) for row in host]  # ids exact below 2^24


def cap(block_size: int, max_post_steps: int) -> int:
    """Iterations a block may run (docs/llada22.md rule 2)."""
    return block_size + max_post_steps + 2


def iterate(seq: Sequence, c: Choice, ids: EditIds, threshold: float, editing: Editing) -> int:
    """One iteration of the row's active block after its forward (`c`: its `choose`): applies
    the rule to `seq.block` and returns the cells M2T committed. Sets `seq.block_settled` when
    the block is complete (its forward's input was the final block, so its KV is final)."""
    assert seq.block is not None and seq.levenshtein is not None
    st: LevenshteinState = seq.levenshtein
    st.sources = None
    x, B, P = seq.block, len(seq.block), seq.prompt_len
    gen = [seq.block_start + i >= P for i in range(B)]
    if st.orig is None:  # the block's first iteration: its generated cells are all masks
        st.orig = [g and t == ids.mask for g, t in zip(gen, x, strict=True)]
    masked = [i for i in range(B) if gen[i] and x[i] == ids.mask]
    o = sum(st.orig[i] for i in masked)
    n_new = len(masked) - o
    st.post = st.post + 1 if o == 0 else 0
    seq.post_steps = st.post
    limit = cap(B, editing.max_post_steps)
    if not masked and (st.post > editing.max_post_steps or st.step >= limit):
        seq.block_settled = True  # budget end: this forward's input was the final block
        return 0
    closing = st.step == limit - 1
    final = closing or (o == 0 and st.post >= editing.max_post_steps)
    writes: dict[int, int] = {}
    if masked:
        if final or st.step >= B:
            take = masked
        else:
            need = 1 + n_new
            above = [i for i in masked if c.p[i] > threshold]
            take = above if len(above) >= need else sorted(
                masked, key=lambda i: (-c.p[i], i))[: min(need, len(masked))]
        writes = {i: c.v[i] for i in take}
    committed = len(writes)
    if not closing:
        for i in range(B):
            if gen[i] and x[i] != ids.mask and c.v[i] != x[i] and c.p[i] > editing.threshold:
                writes[i] = c.v[i]
    if final:  # no edit token is written in a final round
        for i in [i for i, t in writes.items() if t in (ids.delete, ids.split)]:
            if c.plain[i] == x[i]:
                del writes[i]
            else:
                writes[i] = c.plain[i]
    written = [writes.get(i, t) for i, t in enumerate(x)]
    if not final and writes and tuple(written) in st.seen:
        written = _break_loop(written, writes, c, st.seen)
    st.seen.add(tuple(written))
    seq.block_edits += sum(1 for i in writes if i not in masked)
    new, flags, st.sources = _scan(x, written, st.orig, gen, ids)
    if not masked and new == x:  # stable end
        seq.block_settled = True
        return committed
    seq.block, st.orig, st.step = new, flags, st.step + 1
    return committed


def _break_loop(written: list[int], writes: dict[int, int], c: Choice,
                seen: set[tuple[int, ...]]) -> list[int]:
    """Rule 8: rewrite the least confident written cell with its runner-up, then the next one,
    until the written block is new (at most `ANTI_LOOP_TRIES` cells; else the last try)."""
    trial = written
    for i in sorted(writes, key=lambda i: (c.p[i], i))[:ANTI_LOOP_TRIES]:
        alt = c.second[i]  # outside final rounds every write is the cell's candidate v
        trial = written[:i] + [alt] + written[i + 1:]
        if tuple(trial) not in seen:
            break
    return trial


def _scan(x: list[int], written: list[int], orig: list[bool], gen: list[bool], ids: EditIds
          ) -> tuple[list[int], list[bool], list[int | None]]:
    """Rule 9: consume DELETE and SPLIT left to right; truncate or pad with masks to B cells.
    Prompt cells (a prefix of the block) stay in place. Also each new cell's source cell (None
    for an inserted or padding mask)."""
    B = len(x)
    new: list[int] = []
    flags: list[bool] = []
    sources: list[int | None] = []
    for i in range(B):
        t = written[i]
        if not gen[i]:
            new.append(x[i])
            flags.append(False)
            sources.append(i)
        elif t == ids.delete:
            continue
        elif t == ids.split:
            new += [ids.mask, x[i]]
            flags += [False, orig[i]]
            sources += [None, i]
        else:
            new.append(t)
            flags.append(orig[i])
            sources.append(i)
    pad = max(0, B - len(new))
    return (new[:B] + [ids.mask] * pad, flags[:B] + [False] * pad,
            sources[:B] + [None] * pad)
