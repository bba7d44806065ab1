"""Tensor parallelism on the model side: `TPGroup` (this process's place in the group and the
collectives the model needs), the split rules (which KV heads and vocabulary rows a rank holds,
which group sizes are allowed) and `VocabParallelEmbedding`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from server.model.config import ModelConfig


@dataclass(frozen=True)
class TPGroup:
    rank: int = 0
    size: int = 1
    group: Any = None  # torch.distributed ProcessGroup of the forward; None = the default group
    cpu_group: Any = None  # a gloo group over the same ranks, for host-side agreements

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum `x` over the ranks (in place); a no-op on a single rank."""
        if self.size == 1:
            return x
        import torch.distributed as dist

        x = x.contiguous()
        dist.all_reduce(x, group=self.group)
        return x

    def gather_to_first(self, x: torch.Tensor) -> list[torch.Tensor] | None:
        """Every rank's `x`, in rank order, on the group's rank 0; None on the other ranks.
        A collective: every rank calls it, with the same shape and dtype."""
        if self.size == 1:
            return [x]
        import torch.distributed as dist

        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.size)] if self.rank == 0 else None
        dist.gather(x, parts, group=self.group, group_dst=0)
        return parts

    def agree_min(self, n: int) -> int:
        """The smallest `n` over the ranks (e.g. KV pages every rank can hold)."""
        if self.size == 1:
            return n
        import torch.distributed as dist

        t = torch.tensor([n], dtype=torch.long)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.cpu_group)
        return int(t.item())


SINGLE = TPGroup()


def local_kv_heads(cfg: ModelConfig, size: int) -> int:
    """KV heads one rank holds: its share, or one (replicated) when size > the KV-head count."""
    return max(1, cfg.num_key_value_heads // size)


def kv_head_range(cfg: ModelConfig, rank: int, size: int) -> range:
    """The global KV heads rank `rank` holds. size <= nkv: its share [r·nkv/size, ...). size >
    nkv (vLLM's rule, size % nkv == 0): the single KV head r // (size / nkv), replicated on
    size / nkv consecutive ranks. Either way they are exactly the KV heads its Q heads
    [r·nh/size, (r+1)·nh/size) use under GQA (Q head h uses KV head h // (nh / nkv)); checked."""
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    n = local_kv_heads(cfg, size)
    first = rank * n if size <= nkv else rank // (size // nkv)
    kv = range(first, first + n)
    q = range(rank * nh // size, (rank + 1) * nh // size)
    used = sorted({h // (nh // nkv) for h in q})
    if used != list(kv):
        raise ValueError(f"tensor_parallel_size {size}: rank {rank}'s Q heads "
                         f"[{q.start}, {q.stop}) use KV heads {used}, but it holds {list(kv)}")
    return kv


def vocab_rows(vocab_size: int, size: int) -> int:
    """Rows Vp = ceil(V / size) of the embedding and lm_head per rank: rank r holds vocabulary
    rows [r·Vp, (r+1)·Vp); the last rank's rows past V are zero padding."""
    return -(-vocab_size // size)


def check_tp_size(cfg: ModelConfig, size: int) -> None:
    """Every split the model uses must be even: Q heads, experts, the dense/shared MLP widths;
    KV heads are split when size divides their count and replicated (one per rank) when size is
    a multiple of it. The vocabulary need not divide: its last shard is padded."""
    if size < 1:
        raise ValueError("tensor_parallel_size must be >= 1")
    if size == 1:
        return
    nkv = cfg.num_key_value_heads
    need = {
        "num_attention_heads": cfg.num_attention_heads,
        "num_experts": cfg.num_experts,
        "intermediate_size": cfg.intermediate_size,
        "moe_intermediate_size * num_shared_experts":
            cfg.moe_intermediate_size * cfg.num_shared_experts,
    }
    bad = [f"must divide {k}={v}" for k, v in need.items() if v % size]
    if nkv % size and size % nkv:
        bad.append(f"must divide num_key_value_heads={nkv} or be a multiple of it "
                   f"(KV heads are split, or replicated one per rank when "
                   f"tensor_parallel_size > num_key_value_heads)")
    if bad:
        raise ValueError(f"tensor_parallel_size {size} {'; '.join(bad)}")
    for r in range(size):
        kv_head_range(cfg, r, size)


class VocabParallelEmbedding(nn.Module):
    """The [V, H] embedding split by vocabulary rows: `weight` [Vp, H] holds rows
    [rank·Vp, (rank+1)·Vp) (`vocab_rows`). Ids outside them look up zeros; the all-reduce then
    adds, for each token, the one rank's row that holds it to zeros, so the result is exact."""

    def __init__(self, vocab_size: int, hidden: int, tp: TPGroup) -> None:
        super().__init__()
        self.tp = tp
        self.rows = vocab_rows(vocab_size, tp.size)
        self.first = tp.rank * self.rows
        self.weight = nn.Parameter(torch.zeros(self.rows, hidden))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.first  # [T] (any leading shape)
        mine = (local >= 0) & (local < self.rows)  # [T]
        h = F.embedding(torch.where(mine, local, 0), self.weight)  # [T, H]
        return self.tp.all_reduce(h.masked_fill(~mine[..., None], 0))  # [T, H]
