"""The KV tensors themselves: per-layer K and V as flat slot arrays addressed by page. The page
bookkeeping (which sequence owns which page) is `PagePool` / `KVManager`; this is the storage."""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer K and V as flat slot arrays: slot = page * page_size + offset. Pages
    0..num_pages-1 are the pool's; with `scratch`, one more page (`scratch_page`) that no
    sequence owns takes the writes of CUDA-graph padding."""

    def __init__(self, num_layers: int, num_pages: int, page_size: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device,
                 scratch: bool = False) -> None:
        shape = (num_layers, (num_pages + scratch) * page_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # [L, slots, nkv, hd]
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.num_pages, self.page_size = num_pages, page_size
        self.scratch_page: int | None = num_pages if scratch else None

    @staticmethod
    def bytes_per_page(num_layers: int, page_size: int, num_kv_heads: int, head_dim: int,
                       dtype: torch.dtype) -> int:
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * page_size * num_kv_heads * head_dim * itemsize
