"""flashinfer attention over the paged KV cache (CUDA only; imported lazily by the registry).

One `BatchPrefillWithPagedKVCacheWrapper` plan per forward, shared by every layer:
- a segment whose queries lie in one attention block (a denoise step: the active block after
  its committed pages) needs no mask beyond kv_len: `causal=False`;
- causal forwards (attn_block 1, AR) use flashinfer's causal mask (queries end at kv_len);
- block-causal forwards spanning several blocks (prefill chunks) pass a custom mask
  `key_block <= query_block`, row-major per segment as flashinfer expects.
K/V of this forward are written into their slots first, as in the torch backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flashinfer
import torch

from server.kv_cache.tensors import KVCache
from server.runner.forward_batch import ForwardBatch

WORKSPACE_BYTES = 128 << 20


@dataclass(slots=True)
class _Meta:
    wrapper: Any


class FlashInferAttention:
    name = "flashinfer"

    def __init__(self) -> None:
        self._workspace: torch.Tensor | None = None

    def prepare(self, fb: ForwardBatch) -> _Meta:
        dev = fb.input_ids.device
        if self._workspace is None:
            self._workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=dev)
        ps, blk = fb.page_size, fb.attn_block
        kv_len = fb.kv_len  # [S] cpu
        q_start = fb.q_start
        n_pages = (kv_len + ps - 1) // ps  # [S]
        kv_indptr = torch.zeros(fb.num_segments + 1, dtype=torch.int32)
        kv_indptr[1:] = n_pages.cumsum(0)
        table = fb.page_table.cpu()
        indices = torch.cat([table[i, : int(n)] for i, n in enumerate(n_pages)])
        last = (kv_len - (n_pages - 1) * ps).to(torch.int32)
        one_block = bool(((q_start // blk) == ((kv_len - 1) // blk)).all())
        custom = None
        causal = False
        if blk == 1:
            causal = True
        elif not one_block:
            parts = []
            for qs, kl in zip(q_start.tolist(), kv_len.tolist(), strict=True):
                qb = torch.arange(qs, kl) // blk
                kb = torch.arange(kl) // blk
                parts.append((kb[None, :] <= qb[:, None]).flatten())
            custom = torch.cat(parts).to(dev)
        wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self._workspace, "NHD")
        return _Meta(wrapper=(wrapper, dict(
            qo_indptr=fb.qo_indptr.to(torch.int32).to(dev),
            paged_kv_indptr=kv_indptr.to(dev), paged_kv_indices=indices.to(torch.int32).to(dev),
            paged_kv_last_page_len=last.to(dev), page_size=ps, causal=causal,
            custom_mask=custom)))

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv: KVCache, fb: ForwardBatch, meta: _Meta) -> torch.Tensor:
        # q [T, nh, hd]; k, v [T, nkv, hd] → [T, nh, hd]
        kv.k[layer].index_copy_(0, fb.slot_mapping, k)
        kv.v[layer].index_copy_(0, fb.slot_mapping, v)
        wrapper, plan = meta.wrapper
        nh, nkv, hd = q.shape[1], k.shape[1], q.shape[2]
        if plan is not None:  # plan once per forward, on the first layer
            wrapper.plan(num_qo_heads=nh, num_kv_heads=nkv, head_dim_qk=hd,
                         q_data_type=q.dtype, kv_data_type=kv.k.dtype, **plan)
            meta.wrapper = (wrapper, None)
        pages = kv.k.shape[1] // kv.page_size  # the scratch page included, if any
        cache = (kv.k[layer].view(pages, kv.page_size, nkv, hd),
                 kv.v[layer].view(pages, kv.page_size, nkv, hd))
        return wrapper.run(q.contiguous(), cache)
