"""Seeded random weights with exactly the LLaDA2 / Ling-2.0 checkpoint names and shapes (spec §3)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch

# `peaky=True` multiplies lm_head by this. With unit-RMS hidden states (what the final RMSNorm
# produces) and lm_head ~ N(0, s²/H), the logits have std ≈ s. Measured on 4000 random unit-RMS
# vectors, V = 1024, H = 64, three seeds: the share of positions whose top-1 softmax
# probability exceeds 0.95 is 0.00 at s = 1 (flat), 0.22 at s = 8, 0.39 at s = 12, 0.59 at
# s = 20. 12 sits mid-range, so a block commits several tokens per step but not all at once.
PEAKY_SCALE = 12.0
NORM_NOISE = 0.1  # norm weights are 1 + 0.1·N(0, 1): they matter, but stay near 1
EXPERT_BIAS_STD = 0.1  # nonzero so the selection-only bias path is exercised

Config = dict[str, Any]


def _generator(seed: int, name: str) -> torch.Generator:
    """One generator per tensor, seeded from (seed, name): a tensor's values do not depend on
    which other tensors exist (layer count, peaky) or on the order they are drawn in."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _linear(seed: int, name: str, out: int, inp: int, dtype: torch.dtype,
            scale: float = 1.0) -> torch.Tensor:
    """N(0, scale²/fan_in): keeps activations O(1) through the layers."""
    w = torch.randn(out, inp, generator=_generator(seed, name))
    return w.mul_(scale * inp ** -0.5).to(dtype)


def _norm(seed: int, name: str, n: int, dtype: torch.dtype) -> torch.Tensor:
    return (1 + NORM_NOISE * torch.randn(n, generator=_generator(seed, name))).to(dtype)


def tensor_shapes(cfg: Config) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Every checkpoint tensor name with its shape, in file order (spec §3)."""
    H, V, hd = cfg["hidden_size"], cfg["vocab_size"], cfg["head_dim"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    E, mi = cfg["num_experts"], cfg["moe_intermediate_size"]
    shared = mi * cfg["num_shared_experts"]
    yield "model.word_embeddings.weight", (V, H)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (H,)
        yield p + "attention.query_key_value.weight", ((nh + 2 * nkv) * hd, H)
        yield p + "attention.query_layernorm.weight", (hd,)
        yield p + "attention.key_layernorm.weight", (hd,)
        yield p + "attention.dense.weight", (H, nh * hd)
        yield p + "post_attention_layernorm.weight", (H,)
        if i < cfg["first_k_dense_replace"] or E == 0:
            inter = cfg["intermediate_size"]
            yield from _mlp(p + "mlp.", inter, H)
            continue
        yield p + "mlp.gate.weight", (E, H)
        yield p + "mlp.gate.expert_bias", (E,)
        for e in range(E):
            yield from _mlp(p + f"mlp.experts.{e}.", mi, H)
        if shared:
            yield from _mlp(p + "mlp.shared_experts.", shared, H)
    yield "model.norm.weight", (H,)
    yield "lm_head.weight", (V, H)


def _mlp(prefix: str, inter: int, H: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    yield prefix + "gate_proj.weight", (inter, H)
    yield prefix + "up_proj.weight", (inter, H)
    yield prefix + "down_proj.weight", (H, inter)


def random_tensors(cfg: Config, seed: int, peaky: bool = False,
                   dtype: torch.dtype = torch.float32) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) one at a time, so a caller can stream a 16B-parameter checkpoint."""
    for name, shape in tensor_shapes(cfg):
        if name.endswith("expert_bias"):  # always fp32 (dInfer and SGLang keep it fp32)
            g = _generator(seed, name)
            yield name, EXPERT_BIAS_STD * torch.randn(shape, generator=g, dtype=torch.float32)
        elif len(shape) == 1:
            yield name, _norm(seed, name, shape[0], dtype)
        elif name == "model.word_embeddings.weight":  # unit-RMS rows, like normed states
            yield name, torch.randn(shape, generator=_generator(seed, name)).to(dtype)
        elif name == "lm_head.weight":
            yield name, _linear(seed, name, *shape, dtype, PEAKY_SCALE if peaky else 1.0)
        else:
            yield name, _linear(seed, name, *shape, dtype)


def random_state_dict(config: Config, seed: int, peaky: bool = False,
                      dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The whole state dict at once: tiny configs only (use `random_tensors` to stream)."""
    return dict(random_tensors(config, seed, peaky, dtype))
