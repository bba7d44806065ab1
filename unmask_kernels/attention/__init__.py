"""Paged query-block attention (the rows of each block of Bq query rows attend to the first
kv_len keys of their sequence in a paged KV cache): torch reference and Triton kernel,
registered under op "attention". Every implementation has `ref.paged_block_attention_ref`'s
signature (and semantics, in its docstring). Importing this package does not import Triton."""

from __future__ import annotations

import torch

from ..registry import register
from .ref import paged_block_attention_ref

register("attention", "torch", "unmask_kernels.attention.ref:paged_block_attention_ref")
register("attention", "triton", "unmask_kernels.attention.triton_paged:paged_block_attention")


def paged_block_attention(
    q: torch.Tensor,  # [N*Bq, H, D] bf16/fp16/fp32
    k_cache: torch.Tensor,  # [num_slots, KVH, D]
    v_cache: torch.Tensor,  # [num_slots, KVH, D]
    page_table: torch.Tensor,  # [N, max_pages] int32/int64
    kv_len: torch.Tensor,  # [N] int32/int64
    page_size: int,
    scale: float | None = None,
) -> torch.Tensor:  # [N*Bq, H, D] q.dtype
    """The Triton kernel (`triton_paged.paged_block_attention`, default tuning), imported on
    first call: CUDA tensors, or CPU ones under TRITON_INTERPRET=1. CUDA-graph safe."""
    from .triton_paged import paged_block_attention as kernel

    return kernel(q, k_cache, v_cache, page_table, kv_len, page_size, scale)


__all__ = ["paged_block_attention", "paged_block_attention_ref"]
