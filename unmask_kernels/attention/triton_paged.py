# mypy: allow-untyped-defs
# (@triton.jit kernels: arguments are pointers and constexprs)
"""Paged query-block attention in Triton (same semantics as `ref.paged_block_attention_ref`).

CUDA-graph safe: the grid depends on shapes only, each program reads its block's kv_len from
device memory and loops over key tiles up to it; nothing is read back to the host.
1. `_attn`, grid [N, KVH, m_tiles * NSPLIT]: one program takes one query block, one kv head
   and BLOCK_M of its packed (query row, query head) pairs (GQA packing: the H / KVH heads of a
   kv head share every key tile, so Bq = 1 decode still fills a 16-row tensor-core tile), and
   one of NSPLIT slices of the key range [0, kv_len). Online softmax in fp32 (base 2, the scale
   folded in); keys are gathered per position (slot from the page table), so a tile may span
   pages. With NSPLIT = 1 it writes the output; else an fp32 partial and its log-sum-exp.
2. `_combine` (NSPLIT > 1 only), grid [N*Bq, H]: merges the slices (flash-decoding style).
Splitting keeps the SMs busy when N * KVH is small and keys are long (decode); the count is
chosen on the host from shapes (max_pages * page_size bounds kv_len)."""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _attn(q_ptr, k_ptr, v_ptr, pt_ptr, len_ptr, o_ptr, lse_ptr,
          sq_t, sq_h, sk_s, sk_h, sv_s, sv_h, spt_n, spt_p, so_s, so_t, so_h, sl_s, sl_t,
          Bq, G, D, max_keys, qk_scale,
          PAGE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
          BLOCK_D: tl.constexpr, NSPLIT: tl.constexpr, IEEE: tl.constexpr):
    blk = tl.program_id(0)
    kvh = tl.program_id(1)
    mt = tl.program_id(2) // NSPLIT
    split = tl.program_id(2) % NSPLIT
    m = mt * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM] packed (row, head-in-group)
    live = m < Bq * G
    row = (blk * Bq + m // G).to(tl.int64)  # [BM] query row
    head = kvh * G + m % G  # [BM] query head
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    q = tl.load(q_ptr + row[:, None] * sq_t + head[:, None] * sq_h + d[None, :],
                mask=live[:, None] & d_ok[None, :], other=0.0)  # [BM, BD]
    kv_len = tl.minimum(tl.load(len_ptr + blk).to(tl.int32), max_keys)
    chunk = tl.cdiv(tl.cdiv(kv_len, NSPLIT), BLOCK_N) * BLOCK_N
    lo = split * chunk
    hi = tl.minimum(lo + chunk, kv_len)
    pt_row = pt_ptr + blk.to(tl.int64) * spt_n
    k_base = k_ptr + kvh.to(tl.int64) * sk_h
    v_base = v_ptr + kvh.to(tl.int64) * sv_h
    m_i = tl.full([BLOCK_M], -float("inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)  # [BN] key positions
        n_ok = n < hi
        page = tl.load(pt_row + (n // PAGE) * spt_p, mask=n_ok, other=0).to(tl.int64)
        slot = page * PAGE + n % PAGE  # [BN]
        kt = tl.load(k_base + slot[None, :] * sk_s + d[:, None],
                     mask=d_ok[:, None] & n_ok[None, :], other=0.0)  # [BD, BN]
        if IEEE:  # fp32 inputs, or the interpreter (its bf16 dot is wrong): exact fp32
            s = tl.dot(q.to(tl.float32), kt.to(tl.float32), input_precision="ieee")
        else:
            s = tl.dot(q, kt)  # [BM, BN] fp32
        s = tl.where(n_ok[None, :], s * qk_scale, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: every tile has a live key
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + slot[:, None] * sv_s + d[None, :],
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)  # [BN, BD]
        if IEEE:
            pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    has = l_i > 0  # false only for an empty key slice (or kv_len 0): zeros, not NaN
    o = acc / tl.where(has, l_i, 1.0)[:, None]
    out = o_ptr + split * so_s + row[:, None] * so_t + head[:, None] * so_h + d[None, :]
    tl.store(out, o.to(o_ptr.dtype.element_ty), mask=live[:, None] & d_ok[None, :])
    if NSPLIT > 1:
        lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), -float("inf"))
        tl.store(lse_ptr + split * sl_s + row * sl_t + head, lse, mask=live)


@triton.jit
def _combine(part_ptr, lse_ptr, o_ptr, sp_s, sp_t, sp_h, sl_s, sl_t, so_t, so_h, D,
             NSPLIT: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    s_ok = s < NSPLIT
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    lse = tl.load(lse_ptr + s * sl_s + t * sl_t + h, mask=s_ok, other=-float("inf"))  # [BS]
    mx = tl.max(lse, axis=0)
    mx = tl.where(mx == -float("inf"), 0.0, mx)
    w = tl.exp2(lse - mx)  # [BS]; 0 for empty slices
    part = tl.load(part_ptr + s[:, None] * sp_s + t * sp_t + h * sp_h + d[None, :],
                   mask=s_ok[:, None] & d_ok[None, :], other=0.0)  # [BS, BD]
    total = tl.sum(w, axis=0)
    o = tl.sum(part * w[:, None], axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(o_ptr + t * so_t + h * so_h + d, o.to(o_ptr.dtype.element_ty), mask=d_ok)


@functools.cache
def _num_sms(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


def _auto_splits(programs: int, max_keys: int, block_n: int, device: torch.device) -> int:
    """Enough key slices for ~2 programs per SM, each slice at least 4 key tiles long; a
    power of two (few compiled variants: NSPLIT is a compile-time constant)."""
    if device.type != "cuda":
        return 1
    sms = _num_sms(device.index if device.index is not None else torch.cuda.current_device())
    want = -(-2 * sms // programs)
    n = max(1, min(want, max_keys // (4 * block_n), 32))
    return 1 << (n.bit_length() - 1)


def paged_block_attention(
    q: torch.Tensor,  # [N*Bq, H, D] bf16/fp16/fp32, last dim contiguous
    k_cache: torch.Tensor,  # [num_slots, KVH, D], last dim contiguous
    v_cache: torch.Tensor,  # [num_slots, KVH, D], last dim contiguous
    page_table: torch.Tensor,  # [N, max_pages] int32/int64
    kv_len: torch.Tensor,  # [N] int32/int64, on q's device
    page_size: int,
    scale: float | None = None,
    *,
    num_splits: int | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:  # [N*Bq, H, D] q.dtype, contiguous
    """Drop-in for `ref.paged_block_attention_ref` (its docstring has the semantics). No host
    read: capturable in a CUDA graph, replayed with new q / cache / page_table / kv_len
    contents. `num_splits` (key slices per block, default from shapes and the SM count),
    `block_m` (packed query rows per tile) and `block_n` (keys per tile) are tuning knobs."""
    T, H, D = q.shape
    N, max_pages = page_table.shape
    KVH = k_cache.shape[1]
    Bq = T // max(N, 1)  # rows per query block
    assert N * Bq == T and H % KVH == 0 and kv_len.shape == (N,)
    assert k_cache.shape[2] == D and v_cache.shape == k_cache.shape
    assert k_cache.stride(2) == 1 and v_cache.stride(2) == 1
    assert page_size >= 1 and page_size & (page_size - 1) == 0
    assert page_table.dtype in (torch.int32, torch.int64)
    assert kv_len.dtype in (torch.int32, torch.int64)
    if q.stride(2) != 1:
        q = q.contiguous()
    G = H // KVH
    out = torch.empty(T, H, D, dtype=q.dtype, device=q.device)
    if T == 0:
        return out
    cuda = q.device.type == "cuda"
    rows = Bq * G  # packed (row, head) pairs per block and kv head
    bm = block_m or max(16, min(triton.next_power_of_2(rows), 64))
    bn = block_n or (64 if cuda else 32)
    bd = max(16, triton.next_power_of_2(D))
    m_tiles = triton.cdiv(rows, bm)
    max_keys = max_pages * page_size
    ns = num_splits or _auto_splits(N * KVH * m_tiles, max_keys, bn, q.device)
    scale = D**-0.5 if scale is None else scale
    ieee = q.dtype == torch.float32 or not cuda
    warps = 8 if bm * bd >= 128 * 128 else 4
    common = dict(PAGE=page_size, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, NSPLIT=ns, IEEE=ieee,
                  num_warps=warps)
    grid = (N, KVH, m_tiles * ns)
    args = (q, k_cache, v_cache, page_table, kv_len)
    strides = (q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
               v_cache.stride(0), v_cache.stride(1), page_table.stride(0),
               page_table.stride(1))
    scalars = (Bq, G, D, max_keys, scale * LOG2E)
    if ns == 1:
        _attn[grid](*args, out, out, *strides, 0, out.stride(0), out.stride(1), 0, 0,
                    *scalars, **common)
        return out
    part = torch.empty(ns, T, H, D, dtype=torch.float32, device=q.device)
    lse = torch.empty(ns, T, H, dtype=torch.float32, device=q.device)
    _attn[grid](*args, part, lse, *strides, part.stride(0), part.stride(1), part.stride(2),
                lse.stride(0), lse.stride(1), *scalars, **common)
    _combine[(T, H)](part, lse, out, part.stride(0), part.stride(1), part.stride(2),
                     lse.stride(0), lse.stride(1), out.stride(0), out.stride(1), D,
                     NSPLIT=ns, BLOCK_S=triton.next_power_of_2(ns), BLOCK_D=bd)
    return out
