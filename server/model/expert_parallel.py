"""Expert-parallel MoE block: the router is replicated (every rank picks the same experts), each
rank runs only the assignments to its own contiguous range of experts plus its column/row slice
of the shared expert, and returns a partial sum that the caller all-reduces."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from server.model.config import ModelConfig
from server.model.layers import SwiGLU
from server.model.moe import Experts, ExpertsFn, Router
from server.model.parallel import TPGroup


class ExpertParallelMoE(nn.Module):
    """Same parameter names as `SparseMoE` (gate, experts, shared_experts), local shapes."""

    def __init__(self, cfg: ModelConfig, tp: TPGroup, impl: ExpertsFn) -> None:
        super().__init__()
        self.num_local = cfg.num_experts // tp.size
        self.first = tp.rank * self.num_local
        self.gate = Router(cfg)
        self.experts = Experts(dataclasses.replace(cfg, num_experts=self.num_local), impl)
        shared = cfg.moe_intermediate_size * cfg.num_shared_experts
        self.shared_experts = SwiGLU(cfg.hidden_size, shared // tp.size) if shared > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, H] → this rank's partial output [T, H] (sum over ranks = the full MoE)."""
        ids, weights = self.gate(x)  # [T, k] global expert ids, fp32 weights
        local = ids - self.first
        mine = (local >= 0) & (local < self.num_local)  # [T, k]
        token, slot = mine.nonzero(as_tuple=True)  # [N] assignments this rank owns
        y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # [T, H]
        if token.numel():
            out = self.experts(x[token], local[token, slot, None], weights[token, slot, None])
            y.index_add_(0, token, out.float())  # [N, H] weighted outputs summed per token in fp32
        y = y.to(x.dtype)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y
