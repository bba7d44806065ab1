"""`TPGroup`: this process's place in the tensor-parallel group, and the one collective the
model needs (a sum of row-parallel partial outputs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

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


def check_tp_size(cfg: ModelConfig, size: int) -> None:
    """Every split the model uses must be even: heads (capped at the KV-head count, KV heads
    are never replicated), experts, and the dense/shared MLP widths."""
    if size < 1:
        raise ValueError("tensor_parallel_size must be >= 1")
    if size == 1:
        return
    need = {
        "num_key_value_heads": cfg.num_key_value_heads,
        "num_attention_heads": cfg.num_attention_heads,
        "num_experts": cfg.num_experts,
        "intermediate_size": cfg.intermediate_size,
        "moe_intermediate_size * num_shared_experts":
            cfg.moe_intermediate_size * cfg.num_shared_experts,
    }
    if size > cfg.num_key_value_heads:
        raise ValueError(f"tensor_parallel_size {size} exceeds num_key_value_heads "
                         f"{cfg.num_key_value_heads}: KV heads are split, never replicated")
    bad = [f"{k}={v}" for k, v in need.items() if v % size]
    if bad:
        raise ValueError(f"tensor_parallel_size {size} must divide {', '.join(bad)}")
