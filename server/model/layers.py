"""Small building blocks of the Ling-2.0 / LLaDA2 decoder: RMSNorm, the SwiGLU MLP, and `Attend`,
the one thing the model needs from whoever runs it."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """weight * to_input_dtype(x_f32 * rsqrt(mean(x_f32²) + eps)): cast back before the weight."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); gate and up are fused into one [2I, H] weight."""

    def __init__(self, hidden: int, inter: int) -> None:
        super().__init__()
        self.inter = inter
        self.gate_up_proj = nn.Linear(hidden, 2 * inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.inter, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Attend(Protocol):
    """Per-forward attention over the paged KV (the runner's `AttentionContext`): writes this
    forward's K/V of `layer` to their slots, then attends. q [T, nh, hd]; k, v [T, nkv, hd]."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
               ) -> torch.Tensor: ...  # [T, nh, hd]
