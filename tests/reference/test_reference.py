"""Tests of the oracle itself on tiny random checkpoints written to real safetensors files."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.reference.decode import (
    DecodeStats,
    block_causal_visible,
    reference_ar_greedy,
    reference_generate,
    truncate_after_eos,
)
from tests.reference.model import (
    ReferenceModel,
    apply_partial_rope,
    expected_shapes,
    load_reference,
    load_weights,
    rope_cos_sin,
    select_experts,
)

Tensor = torch.Tensor

# §10 tiny config
CONFIG: dict = {
    "architectures": ["LLaDA2MoeModelLM"], "model_type": "llada2_moe",
    "vocab_size": 320, "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "num_experts": 8, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
    "num_shared_experts": 1, "first_k_dense_replace": 1, "routed_scaling_factor": 2.5,
    "partial_rotary_factor": 0.5, "rope_theta": 600000.0, "rope_scaling": None,
    "rms_norm_eps": 1e-6, "use_qk_norm": True, "use_qkv_bias": False, "use_bias": False,
    "tie_word_embeddings": False, "pad_token_id": 0, "max_position_embeddings": 512,
    "torch_dtype": "float32",
}
MASK_ID = 319
VOCAB = CONFIG["vocab_size"]


def random_weights(seed: int, peaky: bool = False) -> dict[str, Tensor]:
    """Every §3 tensor, random; norms around 1; expert_bias normal(0, 0.1) fp32."""
    g = torch.Generator().manual_seed(seed)
    from tests.reference.model import RefConfig

    out: dict[str, Tensor] = {}
    for name, shape in expected_shapes(RefConfig.from_dict(CONFIG)).items():
        if name.endswith("expert_bias"):
            t = 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif name == "model.word_embeddings.weight":
            t = torch.randn(shape, generator=g)
        else:  # [out, in] projections: unit-variance outputs
            t = torch.randn(shape, generator=g) / math.sqrt(shape[1])
        out[name] = t
    if peaky:
        out["lm_head.weight"] = out["lm_head.weight"] * 20.0
    return out


def write_checkpoint(d: Path, weights: dict[str, Tensor], shards: int = 1,
                     dtype: torch.dtype = torch.float32) -> Path:
    """Write config.json plus model.safetensors, or `shards` files and an index."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(CONFIG))
    stored = {n: (t if n.endswith("expert_bias") else t.to(dtype)).contiguous()
              for n, t in weights.items()}
    if shards == 1:
        save_file(stored, d / "model.safetensors")
        return d
    names = sorted(stored)
    weight_map: dict[str, str] = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: stored[n] for n in names[s::shards]}
        save_file(part, d / file)
        weight_map.update(dict.fromkeys(part, file))
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return d
