"""Sparse MoE block: fp32 sigmoid router with selection-only expert bias and group-limited top-k
(llada2-spec §5), or LLaDA2.2 block routing (llada2x-decoding §3.5), stacked routed experts,
and an always-on shared expert."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from server.model.config import ModelConfig
from server.model.layers import SwiGLU
from unmask_kernels.moe.ref import experts_loop

# (x [T, H], ids [T, k], weights [T, k] fp32, w13 [E, 2I, H], w2 [E, H, I]) → [T, H]
ExpertsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                     torch.Tensor]


class Router(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        E = cfg.num_experts
        self.weight = nn.Parameter(torch.empty(E, cfg.hidden_size, dtype=torch.float32))
        self.expert_bias: torch.Tensor  # [E] fp32 (buffer)
        self.register_buffer("expert_bias", torch.zeros(E, dtype=torch.float32))
        self.top_k = cfg.num_experts_per_tok
        self.n_group, self.topk_group = cfg.n_group, cfg.topk_group
        self.scale = cfg.routed_scaling_factor
        self.capacity, self.block = cfg.expert_capacity, cfg.route_block  # 0: per token

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, H] → (expert ids [T, k] long, weights [T, k] fp32)."""
        T, E = x.shape[0], self.weight.shape[0]
        scores = (x.float() @ self.weight.t()).sigmoid()  # [T, E] fp32
        biased = scores + self.expert_bias  # chooses experts; never a weight
        per_group = E // self.n_group
        if self.capacity:  # LLaDA2.2: replaces group-limited top-k (n_group is not used)
            biased = self.admit_per_block(biased)
        elif per_group >= 2:
            groups = biased.view(T, self.n_group, per_group)
            group_score = groups.topk(2, dim=-1).values.sum(-1)  # [T, G]
            keep = group_score.topk(self.topk_group, dim=-1, sorted=False).indices
            keep_mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, keep, True)
            biased = biased.masked_fill(~keep_mask.repeat_interleave(per_group, dim=1), -torch.inf)
        ids = biased.topk(self.top_k, dim=-1, sorted=False).indices  # [T, k]
        weights = scores.gather(1, ids)
        if self.top_k > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return ids, weights * self.scale

    def admit_per_block(self, biased: torch.Tensor) -> torch.Tensor:
        """LLaDA2.2 block routing: biased [T, E] → the same with every expert its block did not
        admit at -inf. The forward's tokens are whole blocks aligned to absolute positions
        (prefill chunks, active blocks and graph padding all are), so row b·B..b·B+B-1 is one
        block. A block admits the `capacity` experts with the highest score over its tokens
        (max of the biased score), by exact score: no index tie-break (§3.5 step 4)."""
        T, E = biased.shape
        B = self.block
        assert T % B == 0, (f"block-routed MoE needs whole {B}-token blocks; this forward has "
                            f"{T} tokens")
        blocks = biased.view(T // B, B, E)
        admitted = blocks.amax(1).topk(self.capacity, dim=-1, sorted=False).indices  # [T/B, C]
        keep = torch.zeros(T // B, E, dtype=torch.bool, device=biased.device)
        keep.scatter_(1, admitted, True)
        return blocks.masked_fill(~keep[:, None, :], -torch.inf).view(T, E)


class Experts(nn.Module):
    """E SwiGLU experts stacked: w13 [E, 2I, H] (gate rows then up rows), w2 [E, H, I]."""

    def __init__(self, cfg: ModelConfig, impl: ExpertsFn = experts_loop) -> None:
        super().__init__()
        E, H, inter = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.inter = inter
        self.w13 = nn.Parameter(torch.empty(E, 2 * inter, H))
        self.w2 = nn.Parameter(torch.empty(E, H, inter))
        self.impl = impl  # the "moe" registry's choice, fixed at construction

    def forward(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.impl(x, ids, weights, self.w13, self.w2)  # [T, H]


class SparseMoE(nn.Module):
    def __init__(self, cfg: ModelConfig, impl: ExpertsFn = experts_loop) -> None:
        super().__init__()
        self.gate = Router(cfg)
        self.experts = Experts(cfg, impl)
        shared = cfg.moe_intermediate_size * cfg.num_shared_experts
        self.shared_experts = SwiGLU(cfg.hidden_size, shared) if shared > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, weights = self.gate(x)
        y = self.experts(x, ids, weights)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y

