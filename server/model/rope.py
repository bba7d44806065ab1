"""Rotary position embedding: partial NeoX (rotate-half) RoPE, plain or YaRN-scaled."""

from __future__ import annotations

import math
from typing import Any

import torch

from server.model.config import ModelConfig


def default_inv_freq(dim: int, base: float) -> torch.Tensor:
    """[dim/2] fp32: 1 / base^(2i/dim)."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))


def yarn_inv_freq(
    dim: int, base: float, scaling: dict[str, Any], max_position_embeddings: int
) -> tuple[torch.Tensor, float]:
    """YaRN frequencies and cos/sin attention factor, with Hugging Face's parameter semantics.

    `original_max_position_embeddings` defaults to `max_position_embeddings`; a missing `factor`
    is their ratio; `attention_factor` defaults to 0.1·ln(factor)+1, or to the ratio of the
    `mscale`/`mscale_all_dim` variants when both are given; beta_fast/beta_slow default 32/1.
    """
    orig = scaling.get("original_max_position_embeddings") or max_position_embeddings
    factor = scaling.get("factor")
    if factor is None:
        factor = max_position_embeddings / orig

    def mscale_of(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attn_factor = scaling.get("attention_factor")
    if attn_factor is None:
        m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attn_factor = mscale_of(factor, m) / mscale_of(factor, m_all) if m and m_all \
            else mscale_of(factor)
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        # the rotary dim whose wavelength makes `rotations` turns over the original context
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1 - ramp  # 1: keep the original frequency (high-frequency channels)
    base_freq = default_inv_freq(dim, base)
    inv_freq = base_freq / factor * (1 - extrapolate) + base_freq * extrapolate
    return inv_freq, float(attn_factor)


def rope_parameters(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """(inv_freq [rotary_dim/2] fp32, attention factor applied to cos and sin)."""
    dim = cfg.rotary_dim
    if cfg.rope_scaling is None:
        return default_inv_freq(dim, cfg.rope_theta), 1.0
    return yarn_inv_freq(dim, cfg.rope_theta, cfg.rope_scaling, cfg.max_position_embeddings)


class RotaryEmbedding(torch.nn.Module):
    """Applies RoPE to the first `rotary_dim` channels of each head; the rest pass through."""

    def __init__(self, cfg: ModelConfig, max_positions: int) -> None:
        super().__init__()
        inv_freq, self.attention_factor = rope_parameters(cfg)
        self.rotary_dim = cfg.rotary_dim
        t = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # [P, rd/2]
        emb = torch.cat([freqs, freqs], dim=-1)  # [P, rd]
        self.cos: torch.Tensor  # [max_positions, rd] (buffer)
        self.sin: torch.Tensor
        self.register_buffer("cos", emb.cos() * self.attention_factor, persistent=False)
        self.register_buffer("sin", emb.sin() * self.attention_factor, persistent=False)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # positions [T]; q [T, nh, hd]; k [T, nkv, hd]
        cos = self.cos[positions].to(q.dtype).unsqueeze(1)  # [T, 1, rd], cast before use (spec)
        sin = self.sin[positions].to(q.dtype).unsqueeze(1)
        return _rotate(q, cos, sin, self.rotary_dim), _rotate(k, cos, sin, self.rotary_dim)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rd: int) -> torch.Tensor:
    rot, rest = x[..., :rd], x[..., rd:]
    half = rd // 2
    rotated = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)  # channel i pairs with i+half
    return torch.cat([rot * cos + rotated * sin, rest], dim=-1)
