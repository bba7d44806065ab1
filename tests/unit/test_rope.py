"""RoPE/YaRN parameters against transformers' own initialisation, and rotation semantics."""

from __future__ import annotations

import pytest
import torch
from transformers import PretrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from server.model.config import ModelConfig
from server.model.rope import RotaryEmbedding, rope_parameters

BASE = dict(
    architectures=["LLaDA2MoeModelLM"], vocab_size=320, hidden_size=64, intermediate_size=128,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    num_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
)

YARN_CASES = [
    # (head_dim, partial factor, theta, max_pos, rope_scaling)
    (128, 0.5, 600000.0, 32768, {"rope_type": "yarn", "factor": 2.0,
                                 "original_max_position_embeddings": 16384}),
    (128, 0.5, 600000.0, 65536, {"type": "yarn", "factor": 4.0}),
    (64, 1.0, 10000.0, 8192, {"rope_type": "yarn", "factor": 4.0, "beta_fast": 16,
                              "beta_slow": 2, "original_max_position_embeddings": 2048}),
    (128, 0.5, 1e6, 131072, {"rope_type": "yarn", "factor": 8.0, "mscale": 0.707,
                             "mscale_all_dim": 1.0, "original_max_position_embeddings": 16384}),
    (96, 0.5, 50000.0, 4096, {"rope_type": "yarn", "factor": 2.0, "attention_factor": 1.3,
                              "original_max_position_embeddings": 1024, "truncate": False}),
    (128, 0.5, 600000.0, 32768, {"rope_type": "yarn", "original_max_position_embeddings": 8192}),
]


def _hf_config(head_dim: int, prf: float, theta: float, max_pos: int, scaling: dict
               ) -> PretrainedConfig:
    params = dict(scaling)
    params["rope_type"] = params.pop("type", params.get("rope_type"))
    params.setdefault("factor", None)
    params.update(rope_theta=theta, partial_rotary_factor=prf)
    params.setdefault("original_max_position_embeddings", max_pos)
    cfg = PretrainedConfig()
    cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim = head_dim * 4, 4, head_dim
    cfg.max_position_embeddings = max_pos
    cfg.rope_parameters = params
    return cfg


@pytest.mark.parametrize("case", YARN_CASES)
def test_yarn_matches_transformers(case: tuple) -> None:
    head_dim, prf, theta, max_pos, scaling = case
    ours = ModelConfig.from_dict(BASE | dict(
        head_dim=head_dim, partial_rotary_factor=prf, rope_theta=theta,
        max_position_embeddings=max_pos, rope_scaling=dict(scaling)))
    inv_freq, attn = rope_parameters(ours)
    ref_inv, ref_attn = ROPE_INIT_FUNCTIONS["yarn"](_hf_config(*case), torch.device("cpu"))
    assert inv_freq.shape == ref_inv.shape == (int(head_dim * prf) // 2,)
    torch.testing.assert_close(inv_freq, ref_inv.float(), rtol=1e-6, atol=0)
    assert attn == pytest.approx(ref_attn, rel=1e-12)


def test_yarn_changes_low_frequencies_only() -> None:
    plain = ModelConfig.from_dict(BASE | dict(rope_theta=600000.0, partial_rotary_factor=0.5,
                                              max_position_embeddings=4096))
    yarn = ModelConfig.from_dict(BASE | dict(
        rope_theta=600000.0, partial_rotary_factor=0.5, max_position_embeddings=4096,
        rope_scaling={"rope_type": "yarn", "factor": 4.0,
                      "original_max_position_embeddings": 1024}))
    f0, a0 = rope_parameters(plain)
    f1, a1 = rope_parameters(yarn)
    assert a0 == 1.0 and a1 > 1.0
    assert torch.equal(f0[0], f1[0])  # the fastest channel is extrapolated unchanged
    torch.testing.assert_close(f1[-1], f0[-1] / 4)  # the slowest is interpolated by the factor


def test_rotation_is_partial_neox() -> None:
    cfg = ModelConfig.from_dict(BASE | dict(rope_theta=10000.0, partial_rotary_factor=0.5))
    rope = RotaryEmbedding(cfg, 64)
    q = torch.randn(5, 4, 16)
    k = torch.randn(5, 2, 16)
    pos = torch.tensor([0, 1, 2, 17, 63])
    q2, k2 = rope(pos, q, k)
    assert torch.equal(q2[..., 8:], q[..., 8:]) and torch.equal(k2[..., 8:], k[..., 8:])
    torch.testing.assert_close(q2[0], q[0])  # position 0: identity
    # channel i pairs with i + rd/2: each pair's norm is preserved
    pair = lambda x: x[..., :4] ** 2 + x[..., 4:8] ** 2  # noqa: E731
    torch.testing.assert_close(pair(q2), pair(q))
    # relative: <R(m)q, R(n)k> depends only on m - n
    a = rope(torch.tensor([3]), q[:1], k[:1])
    b = rope(torch.tensor([10]), q[:1], k[:1])
    dot = lambda r: (r[0][0, 0, :8] * r[1][0, 0, :8]).sum()  # noqa: E731
    torch.testing.assert_close(dot(a), dot(b), rtol=1e-5, atol=1e-5)
