"""Fused confidence-threshold acceptance in Triton (same rule as `ref.accept_blocks`).

Two launches, no host synchronisation:
1. `_row_partials`, grid [S*B, NSPLIT]: each program streams one slice of one row's vocabulary
   once, in its stored dtype (upcast per tile in registers; no fp32 copy of the logits), and
   keeps an online (max, argmax, sum of exp(x - max)) with the mask id excluded.
2. `_select`, grid [S]: merges a block's slices (confidence = exp(max - lse) = 1 / sum), applies
   threshold + most-confident fallback, writes the accepted ids into `block_ids` in place and
   the per-sequence committed count and block-done flag; with edits (LLaDA2.1), also rewrites
   editable positions whose candidate differs with confidence above the row's editing
   threshold, and writes the edited flags.
Splitting the vocabulary keeps every SM streaming even for one sequence (S*B = 32 rows).
Ties: the lowest token id wins the argmax and the lowest position wins a confidence tie.
Sampled rows (temperature > 0) are drawn by the torch sampler on their rows only and enter
step 2 as given (token, confidence) pairs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .ref import EditBatch, SamplingBatch, sample_rows

BLOCK_V = 2048


@triton.jit
def _row_partials(logits_ptr, row_stride, V, mask_id, chunk,
                  m_ptr, s_ptr, idx_ptr, NSPLIT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    split = tl.program_id(1)
    start = split * chunk
    end = tl.minimum(start + chunk, V)
    base = logits_ptr + row.to(tl.int64) * row_stride
    m = -float("inf")
    s = 0.0
    idx = 0
    for off in range(start, end, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        ok = (cols < end) & (cols != mask_id)
        x = tl.load(base + cols, mask=ok, other=-float("inf")).to(tl.float32)  # [BLOCK]
        t_max = tl.max(x, axis=0)
        t_arg = tl.argmax(x, axis=0)
        new_m = tl.maximum(m, t_max)
        safe = tl.where(new_m == -float("inf"), 0.0, new_m)
        s = s * tl.exp(m - safe) + tl.sum(tl.exp(x - safe), axis=0)
        idx = tl.where(t_max > m, off + t_arg, idx)  # strict: earlier tiles win ties
        m = new_m
    out = row * NSPLIT + split
    tl.store(m_ptr + out, m)
    tl.store(s_ptr + out, s)
    tl.store(idx_ptr + out, idx)


@triton.jit
def _select(m_ptr, s_ptr, idx_ptr, given_ptr, given_tok_ptr, given_conf_ptr,
            ids_ptr, undecided_ptr, thr_ptr, k_ptr, committed_ptr, tok_ptr, conf_ptr,
            counts_ptr, done_ptr, editable_ptr, ethr_ptr, edited_ptr, table_rows_ptr, B,
            NSPLIT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
            HAS_GIVEN: tl.constexpr, EDIT: tl.constexpr, HAS_ROWS: tl.constexpr):
    seq = tl.program_id(0)
    b = tl.arange(0, BLOCK_B)
    n = tl.arange(0, BLOCK_N)
    in_b = b < B
    rows = seq * B + b  # [BB]
    part = rows[:, None] * NSPLIT + n[None, :]  # [BB, BN]
    pm = in_b[:, None] & (n[None, :] < NSPLIT)
    m = tl.load(m_ptr + part, mask=pm, other=-float("inf"))
    s = tl.load(s_ptr + part, mask=pm, other=0.0)
    ix = tl.load(idx_ptr + part, mask=pm, other=0)
    best = tl.max(m, axis=1)  # [BB]
    safe = tl.where(best == -float("inf"), 0.0, best)
    w = tl.where(m == -float("inf"), 0.0, tl.exp(m - safe[:, None]))
    total = tl.sum(s * w, axis=1)
    conf = 1.0 / tl.where(total > 0, total, 1.0)  # exp(best - lse); pad rows: 1
    big = 2147483647
    tok = tl.min(tl.where((m == best[:, None]) & pm, ix, big), axis=1)
    if HAS_GIVEN:
        g = tl.load(given_ptr + seq) != 0
        tok = tl.where(g, tl.load(given_tok_ptr + rows, mask=in_b, other=0).to(tl.int32), tok)
        conf = tl.where(g, tl.load(given_conf_ptr + rows, mask=in_b, other=0.0), conf)
    und = (tl.load(undecided_ptr + rows, mask=in_b, other=0) != 0) & in_b
    if HAS_ROWS:  # noqa: SIM108 - constexpr branch; block s is row table_rows[s] of [N, B]
        cells = tl.load(table_rows_ptr + seq).to(tl.int64) * B + b
    else:
        cells = rows.to(tl.int64)
    ids = tl.load(ids_ptr + cells, mask=in_b, other=0)
    if EDIT:  # T2T: same (token, confidence) as M2T, on editable positions only
        editable = (tl.load(editable_ptr + rows, mask=in_b, other=0) != 0) & in_b & ~und
        edited = editable & (tok.to(ids.dtype) != ids) & (conf > tl.load(ethr_ptr + seq))
        tl.store(edited_ptr + rows, edited.to(tl.int8), mask=in_b)
        ids = tl.where(edited, tok.to(ids.dtype), ids)
    conf = tl.where(und, conf, -float("inf"))
    thr = tl.load(thr_ptr + seq)
    above = (conf > thr) & und
    n_und = tl.sum(und.to(tl.int32), axis=0)
    k = tl.minimum(tl.load(k_ptr + seq).to(tl.int32), n_und)
    n_above = tl.sum(above.to(tl.int32), axis=0)
    ci = conf[:, None]
    cj = conf[None, :]
    beats = (cj > ci) | ((cj == ci) & (b[None, :] < b[:, None]))  # j ranks before i
    rank = tl.sum((beats & und[None, :]).to(tl.int32), axis=1)
    chosen = tl.where(n_above >= k, above, rank < k) & und
    tl.store(ids_ptr + cells, tl.where(chosen, tok.to(ids.dtype), ids), mask=in_b)
    tl.store(committed_ptr + rows, chosen.to(tl.int8), mask=in_b)
    tl.store(tok_ptr + rows, tok, mask=in_b)
    tl.store(conf_ptr + rows, conf, mask=in_b)
    count = tl.sum(chosen.to(tl.int32), axis=0)
    tl.store(counts_ptr + seq, count)
    tl.store(done_ptr + seq, (count == n_und).to(tl.int8))


@dataclass(slots=True)
class AcceptOutput:
    committed: torch.Tensor  # [S, B] bool
    counts: torch.Tensor  # [S] int32: tokens committed this step
    done: torch.Tensor  # [S] bool: no undecided position left in the block
    tokens: torch.Tensor  # [S, B] int32: candidate per position
    confidence: torch.Tensor  # [S, B] fp32 (-inf at decided positions)


def _num_splits(rows: int, V: int, device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = -(-4 * sms // rows)
    return max(1, min(want, triton.cdiv(V, BLOCK_V), 64))


def fused_accept(
    logits: torch.Tensor,  # [S, B, V] any float dtype, last dim contiguous (read only)
    block_ids: torch.Tensor,  # [S, B] long, updated in place
    undecided: torch.Tensor,  # [S, B] bool
    threshold: torch.Tensor,  # [S] fp32
    min_commit: torch.Tensor,  # [S] long
    mask_id: int,
    sampling: SamplingBatch | None = None,
    num_splits: int | None = None,
    block_v: int = BLOCK_V,
    edits: EditBatch | None = None,
    rows: torch.Tensor | None = None,
) -> AcceptOutput:
    """With `rows` [S] long, `block_ids` is a [N, B] table and block s is its row rows[s]
    (as in `ref.accept_blocks`): the kernel reads and rewrites that row in place."""
    S, B, V = logits.shape
    dev = logits.device
    if logits.stride(2) != 1:
        logits = logits.contiguous()
    flat = logits.view(S * B, V) if logits.is_contiguous() else logits.reshape(S * B, V)
    R = S * B
    ns = num_splits or _num_splits(R, V, dev)
    chunk = triton.cdiv(triton.cdiv(V, ns), block_v) * block_v
    m = torch.empty(R, ns, dtype=torch.float32, device=dev)
    s = torch.empty_like(m)
    idx = torch.empty(R, ns, dtype=torch.int32, device=dev)
    _row_partials[(R, ns)](flat, flat.stride(0), V, mask_id, chunk, m, s, idx,
                           NSPLIT=ns, BLOCK=block_v)
    given = given_tok = given_conf = m  # placeholders when no row is sampled
    if sampling is not None and any(t > 0 for t in sampling.temperature):
        given = torch.tensor([t > 0 for t in sampling.temperature], dtype=torch.int8,
                             device=dev)
        given_tok = torch.zeros(S, B, dtype=torch.int32, device=dev)
        given_conf = torch.zeros(S, B, dtype=torch.float32, device=dev)
        for i, temp in enumerate(sampling.temperature):
            if temp > 0:
                row = logits[i].float()  # [B, V]: sampled rows only
                row[:, mask_id] = -torch.inf
                t, c = sample_rows(row, temp, sampling.top_k[i], sampling.top_p[i],
                                   sampling.generators[i])
                given_tok[i], given_conf[i] = t.to(torch.int32), c
    committed = torch.empty(S, B, dtype=torch.int8, device=dev)
    tokens = torch.empty(S, B, dtype=torch.int32, device=dev)
    conf = torch.empty(S, B, dtype=torch.float32, device=dev)
    counts = torch.empty(S, dtype=torch.int32, device=dev)
    done = torch.empty(S, dtype=torch.int8, device=dev)
    assert block_ids.is_contiguous() and undecided.is_contiguous()
    editable = ethr = edited = committed  # placeholders without edits
    if edits is not None:
        editable = edits.editable.contiguous().view(torch.int8)
        ethr = edits.threshold.float().contiguous()
        edited = torch.empty(S, B, dtype=torch.int8, device=dev)
    _select[(S,)](m, s, idx, given, given_tok, given_conf, block_ids,
                  undecided.view(torch.int8), threshold.float().contiguous(),
                  min_commit.contiguous(), committed, tokens, conf, counts, done,
                  editable, ethr, edited, rows.contiguous() if rows is not None else counts,
                  B, NSPLIT=ns, BLOCK_B=triton.next_power_of_2(B),
                  BLOCK_N=triton.next_power_of_2(ns), HAS_GIVEN=given is not m,
                  EDIT=edits is not None, HAS_ROWS=rows is not None)
    if edits is not None:
        edits.edited.copy_(edited.view(torch.bool))
    return AcceptOutput(committed.view(torch.bool), counts, done.view(torch.bool), tokens,
                        conf)


def accept_blocks(logits: torch.Tensor, block_ids: torch.Tensor, undecided: torch.Tensor,
                  threshold: torch.Tensor, min_commit: torch.Tensor, mask_id: int,
                  sampling: SamplingBatch | None = None, edits: EditBatch | None = None,
                  rows: torch.Tensor | None = None) -> torch.Tensor:
    """Drop-in for `ref.accept_blocks` (committed [S, B] bool); logits are not modified."""
    return fused_accept(logits, block_ids, undecided, threshold, min_commit, mask_id,
                        sampling, edits=edits, rows=rows).committed
