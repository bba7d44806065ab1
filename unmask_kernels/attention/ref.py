"""Torch reference of paged query-block attention (semantics: `paged_block_attention_ref`).

Vectorised over blocks with a static key bound (max_pages * page_size) and masks, so it makes
no host reads either; scores, softmax and the weighted sum are fp32."""

from __future__ import annotations

import torch


def paged_block_attention_ref(
    q: torch.Tensor,  # [N*Bq, H, D] bf16/fp16/fp32
    k_cache: torch.Tensor,  # [num_slots, KVH, D], num_slots = num_pages * page_size
    v_cache: torch.Tensor,  # [num_slots, KVH, D]
    page_table: torch.Tensor,  # [N, max_pages] int32/int64
    kv_len: torch.Tensor,  # [N] int32/int64, on q's device
    page_size: int,
    scale: float | None = None,
) -> torch.Tensor:  # [N*Bq, H, D] q.dtype
    """Attention of query blocks over a paged KV cache.

    The rows of q are grouped into N = page_table.shape[0] query blocks of Bq = q.shape[0] // N
    rows: rows [i*Bq, (i+1)*Bq) are block i. Every row of block i attends to key positions
    [0, kv_len[i]) of its sequence, with no further mask: block-causal attention at
    granularity Bq (Bq = 32 for a diffusion block; Bq = 1 for autoregressive decode / prefill,
    with kv_len = position + 1). Key position p of block i lives at slot
    `page_table[i, p // page_size] * page_size + p % page_size` of k_cache / v_cache
    (page_size a power of two). GQA: head h reads kv head h // (H // KVH). `scale` defaults
    to D**-0.5. Invariants: 1 <= kv_len[i] <= max_pages * page_size (a block with kv_len 0,
    e.g. batch padding, gets zeros); page-table entries past a block's last page may hold any
    value."""
    T, H, D = q.shape
    N, max_pages = page_table.shape
    KVH = k_cache.shape[1]
    Bq = T // max(N, 1)  # rows per query block
    assert N * Bq == T and H % KVH == 0 and kv_len.shape == (N,)
    scale = D**-0.5 if scale is None else scale
    L = max_pages * page_size
    pos = torch.arange(L, device=q.device)  # [L]
    valid = pos[None, :] < kv_len.to(q.device)[:, None]  # [N, L]
    num_pages = k_cache.shape[0] // page_size
    pages = page_table.long()[:, pos // page_size].clamp(0, num_pages - 1)  # [N, L]
    slots = pages * page_size + pos % page_size  # [N, L]; masked where invalid
    k = k_cache[slots].float().repeat_interleave(H // KVH, dim=2)  # [N, L, H, D]
    v = v_cache[slots].float().repeat_interleave(H // KVH, dim=2)
    v = torch.where(valid[:, :, None, None], v, 0.0)  # unread slots may hold anything
    qb = q.float().reshape(N, Bq, H, D)
    s = torch.einsum("nbhd,nlhd->nhbl", qb, k) * scale  # [N, H, Bq, L]
    s = s.masked_fill(~valid[:, None, None, :], -torch.inf)
    p = torch.where(valid[:, None, None, :], s.softmax(-1), 0.0)  # kv_len 0: zeros, not NaN
    o = torch.einsum("nhbl,nlhd->nbhd", p, v)  # [N, Bq, H, D]
    return o.reshape(T, H, D).to(q.dtype)
