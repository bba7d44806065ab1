"""Which part of each checkpoint tensor a rank holds, read straight from the safetensors file
(`get_slice`), so no rank materialises another rank's shard.

Column-parallel (rows split): query_key_value (per Q/K/V section, whole heads; when tp >
num_key_value_heads each rank takes the one KV head its Q heads use, `kv_head_range`),
gate_proj and up_proj of the dense and shared MLPs. Row-parallel (columns split):
attention.dense and down_proj; their bias lives on rank 0 only, since the partial outputs are
summed. Vocabulary-parallel (rows split, last shard zero-padded to Vp = ceil(V / tp) rows):
model.word_embeddings and lm_head. Routed experts: contiguous ranges, expert e on rank
e // (E / tp). Replicated: norms and the router."""

from __future__ import annotations

import re
from typing import Any

import torch

from server.model.config import ModelConfig
from server.model.parallel import kv_head_range, vocab_rows

_QKV = re.compile(r"\.attention\.query_key_value\.(weight|bias)$")
_DENSE = re.compile(r"\.attention\.dense\.(weight|bias)$")
_EXPERT = re.compile(r"\.mlp\.experts\.(\d+)\.")
_COL = re.compile(r"\.mlp\.(shared_experts\.)?(gate_proj|up_proj)\.weight$")
_ROW = re.compile(r"\.mlp\.(shared_experts\.)?down_proj\.weight$")
_VOCAB = re.compile(r"^(model\.word_embeddings|lm_head)\.weight$")


class Shard:
    """Rank `rank` of `size`; `size == 1` reads every tensor whole."""

    def __init__(self, cfg: ModelConfig, rank: int = 0, size: int = 1) -> None:
        self.cfg, self.rank, self.size = cfg, rank, size
        self.experts_per_rank = cfg.num_experts // size
        self.first_expert = rank * self.experts_per_rank
        self.kv_heads = kv_head_range(cfg, rank, size)  # global KV heads this rank holds

    def local_expert(self, e: int) -> int | None:
        """Global expert id → index in this rank's stacked experts (None: another rank's)."""
        local = e - self.first_expert
        return local if 0 <= local < self.experts_per_rank else None

    def read(self, st: Any, name: str) -> torch.Tensor | None:
        """This rank's part of tensor `name` from an open safetensors file; None if it holds
        none of it."""
        if self.size == 1:
            return st.get_tensor(name)
        if m := _EXPERT.search(name):
            return st.get_tensor(name) if self.local_expert(int(m.group(1))) is not None else None
        if _QKV.search(name):
            return self._qkv(st.get_slice(name))
        if _VOCAB.match(name):
            return self._vocab(st.get_slice(name), name)
        if m := _DENSE.search(name):
            if m.group(1) == "bias":
                return st.get_tensor(name) if self.rank == 0 else None
            return self._split(st.get_slice(name), dim=1)
        if _COL.search(name):
            return self._split(st.get_slice(name), dim=0)
        if _ROW.search(name):
            return self._split(st.get_slice(name), dim=1)
        return st.get_tensor(name)

    def _split(self, sl: Any, dim: int) -> torch.Tensor:
        n = sl.get_shape()[dim] // self.size
        a, b = self.rank * n, (self.rank + 1) * n
        return sl[a:b] if dim == 0 else sl[:, a:b]

    def _qkv(self, sl: Any) -> torch.Tensor:
        # rows [Q heads | K heads | V heads], hd rows per head; take this rank's Q heads and the
        # KV heads they use (its share of them, or the one replicated head when tp > nkv)
        c = self.cfg
        nh, nkv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        q, kv = nh // self.size * hd, len(self.kv_heads) * hd
        k0 = self.kv_heads.start * hd
        starts = (self.rank * q, nh * hd + k0, (nh + nkv) * hd + k0)
        return torch.cat([sl[s : s + n] for s, n in zip(starts, (q, kv, kv), strict=True)])

    def _vocab(self, sl: Any, name: str) -> torch.Tensor:
        # [V, H] → rows [rank·Vp, (rank+1)·Vp) as [Vp, H]; the last shard's rows past V are 0
        vocab, hidden = sl.get_shape()
        if vocab != self.cfg.vocab_size:
            raise ValueError(f"{name}: {vocab} rows, config vocab_size {self.cfg.vocab_size}")
        n = vocab_rows(vocab, self.size)
        a, b = min(self.rank * n, vocab), min((self.rank + 1) * n, vocab)
        rows = sl[a:b]  # [b - a, H]
        if b - a == n:
            return rows
        return torch.cat([rows, rows.new_zeros(n - (b - a), hidden)])  # [Vp, H]
