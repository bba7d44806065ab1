"""Plain float32 Ling-2.0 / LLaDA2 MoE forward written from llada2-spec §3–§5 (slow, no cache)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

Tensor = torch.Tensor


@dataclass(frozen=True)
class RefConfig:
    """The `config.json` fields the forward needs (§1), with HF defaults where a field is absent."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    moe_intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rotary_dim: int
    rope_theta: float
    rms_norm_eps: float
    use_qk_norm: bool
    num_experts: int
    num_experts_per_tok: int
    num_shared_experts: int
    n_group: int
    topk_group: int
    first_k_dense_replace: int
    routed_scaling_factor: float
    tie_word_embeddings: bool

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RefConfig:
        scaling = d.get("rope_scaling")
        if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
            raise NotImplementedError(f"reference supports rope_scaling: null only, got {scaling}")
        nh = d["num_attention_heads"]
        hd = d.get("head_dim") or d["hidden_size"] // nh
        cfg = cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            moe_intermediate_size=d.get("moe_intermediate_size", d["intermediate_size"]),
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=nh,
            num_key_value_heads=d.get("num_key_value_heads") or nh,
            head_dim=hd,
            rotary_dim=int(hd * d.get("partial_rotary_factor", 1.0)),  # §4.3 (not `rotary_dim`)
            rope_theta=float(d.get("rope_theta", 10000.0)),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            use_qk_norm=bool(d.get("use_qk_norm", True)),  # §1: absent → True
            num_experts=d.get("num_experts") or 0,
            num_experts_per_tok=d.get("num_experts_per_tok") or 1,
            num_shared_experts=d.get("num_shared_experts") or 0,
            n_group=d.get("n_group") or 1,
            topk_group=d.get("topk_group") or 1,
            first_k_dense_replace=d.get("first_k_dense_replace") or 0,
            routed_scaling_factor=float(d.get("routed_scaling_factor", 1.0)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        )
        assert nh % cfg.num_key_value_heads == 0, "GQA needs nh % nkv == 0"
        assert cfg.rotary_dim % 2 == 0 and 0 < cfg.rotary_dim <= hd, "bad rotary dim"
        if cfg.num_experts:
            per_group = cfg.num_experts // cfg.n_group
            assert cfg.num_experts % cfg.n_group == 0, "§5: E % n_group == 0"
            assert cfg.n_group == 1 or per_group >= 2, "§5: group score needs >= 2 experts/group"
            assert cfg.topk_group * per_group >= cfg.num_experts_per_tok, "§5: too few experts"
        return cfg

    def is_moe_layer(self, i: int) -> bool:
        return self.num_experts > 0 and i >= self.first_k_dense_replace


def expected_shapes(c: RefConfig) -> dict[str, tuple[int, ...]]:
    """§3: every tensor the forward reads, with its shape."""
    H, V, hd = c.hidden_size, c.vocab_size, c.head_dim
    nh, nkv = c.num_attention_heads, c.num_key_value_heads
    shapes: dict[str, tuple[int, ...]] = {"model.word_embeddings.weight": (V, H),
                                          "model.norm.weight": (H,)}
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, H)

    def mlp(prefix: str, width: int) -> None:
        shapes[prefix + "gate_proj.weight"] = (width, H)
        shapes[prefix + "up_proj.weight"] = (width, H)
        shapes[prefix + "down_proj.weight"] = (H, width)

    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (H,)
        shapes[p + "post_attention_layernorm.weight"] = (H,)
        shapes[p + "attention.query_key_value.weight"] = ((nh + 2 * nkv) * hd, H)
        shapes[p + "attention.dense.weight"] = (H, nh * hd)
        if c.use_qk_norm:
            shapes[p + "attention.query_layernorm.weight"] = (hd,)
            shapes[p + "attention.key_layernorm.weight"] = (hd,)
        if not c.is_moe_layer(i):
            mlp(p + "mlp.", c.intermediate_size)
            continue
        shapes[p + "mlp.gate.weight"] = (c.num_experts, H)
        shapes[p + "mlp.gate.expert_bias"] = (c.num_experts,)
        for e in range(c.num_experts):
            mlp(f"{p}mlp.experts.{e}.", c.moe_intermediate_size)
        if c.num_shared_experts:
            mlp(p + "mlp.shared_experts.", c.moe_intermediate_size * c.num_shared_experts)
    return shapes


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """§4.2: normalise in fp32, cast back to the input dtype, THEN multiply by weight."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def rope_cos_sin(positions: Tensor, rotary_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """§4.3: cos/sin [N, rd] for absolute positions; emb = cat(freqs, freqs)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim)
    freqs = positions.float()[:, None] * inv_freq[None, :]  # [N, rd/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [N, rd]
    return emb.cos(), emb.sin()


def apply_partial_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """§4.3: NeoX rotate-half on the first rd channels of each head; the rest pass through.

    x [N, heads, hd]; cos/sin [N, rd]. Channel i pairs with channel i + rd/2.
    """
    rd = cos.shape[-1]
    rot, rest = x[..., :rd], x[..., rd:]  # [N, h, rd], [N, h, hd - rd]
    half = rd // 2
    rotated_half = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)  # rotate_half(rot)
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)  # [N, 1, rd]
    return torch.cat([rot * cos + rotated_half * sin, rest], dim=-1)


def swiglu(x: Tensor, gate: Tensor, up: Tensor, down: Tensor) -> Tensor:
    """§4.4: down(silu(gate(x)) * up(x)), no bias. x [T, H] → [T, H]."""
    return (F.silu(x @ gate.T) * (x @ up.T)) @ down.T


def select_experts(scores: Tensor, expert_bias: Tensor, *, top_k: int, n_group: int,
                   topk_group: int, routed_scaling_factor: float) -> tuple[Tensor, Tensor]:
    """§5 steps 3–8 on sigmoid scores [T, E] (fp32) → (expert ids [T, k], weights [T, k] fp32).

    The bias only chooses experts; the weights are the unbiased scores of the chosen ones.
    """
    T, E = scores.shape
    biased = scores + expert_bias.float()  # [T, E], §5.3 selection only
    if n_group > 1:  # §5.4 group-limited: keep the topk_group groups by sum of their top-2
        per_group = E // n_group
        group_score = biased.view(T, n_group, per_group).topk(2, dim=-1).values.sum(-1)  # [T, G]
        kept = group_score.topk(topk_group, dim=-1).indices  # [T, topk_group]
        group_ok = torch.zeros(T, n_group, dtype=torch.bool).scatter(1, kept, True)  # [T, G]
        expert_ok = group_ok.repeat_interleave(per_group, dim=1)  # [T, E]
        biased = biased.masked_fill(~expert_ok, -math.inf)
    ids = biased.topk(top_k, dim=-1).indices  # [T, k], §5.5
    weights = scores.gather(1, ids)  # [T, k], §5.6 unbiased
    if top_k > 1:  # §5.7 renormalise
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return ids, weights * routed_scaling_factor  # §5.8


class ReferenceModel:
    """Ling-2.0 / LLaDA2 MoE forward in float32; the attention pattern comes from `visible`."""

    def __init__(self, config: dict[str, Any], weights: dict[str, Tensor]) -> None:
        self.config = RefConfig.from_dict(config)
        self.w: dict[str, Tensor] = {}
        for name, shape in expected_shapes(self.config).items():
            if name not in weights:
                raise ValueError(f"missing tensor {name}")
            if tuple(weights[name].shape) != shape:
                raise ValueError(f"{name}: shape {tuple(weights[name].shape)}, expected {shape}")
            self.w[name] = weights[name].float()  # expert_bias included: fp32 (§3)

    # --- building blocks -------------------------------------------------------------------

    def attention(self, i: int, x: Tensor, visible: Tensor, positions: Tensor) -> Tensor:
        """§4.3 for layer i: x [N, H] (post-norm), visible [N, N] bool → [N, H]."""
        c, p = self.config, f"model.layers.{i}.attention."
        N, nh, nkv, hd = x.shape[0], c.num_attention_heads, c.num_key_value_heads, c.head_dim
        qkv = (x @ self.w[p + "query_key_value.weight"].T).view(N, nh + 2 * nkv, hd)
        q, k, v = qkv.split([nh, nkv, nkv], dim=1)  # [N, nh, hd], [N, nkv, hd], [N, nkv, hd]
        if c.use_qk_norm:  # §4.3.2: per-head RMSNorm over hd, BEFORE RoPE
            q = rms_norm(q, self.w[p + "query_layernorm.weight"], c.rms_norm_eps)
            k = rms_norm(k, self.w[p + "key_layernorm.weight"], c.rms_norm_eps)
        cos, sin = rope_cos_sin(positions, c.rotary_dim, c.rope_theta)  # [N, rd]
        q, k = apply_partial_rope(q, cos, sin), apply_partial_rope(k, cos, sin)
        g = nh // nkv  # §4.3.4: kv head j serves query heads j*g .. j*g+g-1
        k = k.repeat_interleave(g, dim=1)  # [N, nh, hd]
        v = v.repeat_interleave(g, dim=1)  # [N, nh, hd]
        mask = torch.zeros(N, N).masked_fill(~visible, -math.inf)  # [N, N] additive
        scores = torch.einsum("qhd,khd->hqk", q, k) * hd**-0.5 + mask  # [nh, N, N]
        probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)  # fp32 softmax
        out = torch.einsum("hqk,khd->qhd", probs, v).reshape(N, nh * hd)  # [N, nh*hd]
        return out @ self.w[p + "dense.weight"].T

    def mlp(self, prefix: str, x: Tensor) -> Tensor:
        w = self.w
        return swiglu(x, w[prefix + "gate_proj.weight"], w[prefix + "up_proj.weight"],
                      w[prefix + "down_proj.weight"])

    def route(self, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """§5 steps 1–8 for MoE layer i: x [T, H] → (ids [T, k], weights [T, k] fp32)."""
        c, p = self.config, f"model.layers.{i}.mlp.gate."
        scores = torch.sigmoid(x.float() @ self.w[p + "weight"].float().T)  # [T, E] fp32
        return select_experts(scores, self.w[p + "expert_bias"], top_k=c.num_experts_per_tok,
                              n_group=c.n_group, topk_group=c.topk_group,
                              routed_scaling_factor=c.routed_scaling_factor)

    def moe(self, i: int, x: Tensor) -> Tensor:
        """§5.9: per-expert loop; weighted sum over the k slots in fp32; shared expert added."""
        c, p = self.config, f"model.layers.{i}.mlp."
        ids, weights = self.route(i, x)  # [T, k], [T, k]
        expert_out = torch.zeros(*ids.shape, x.shape[1], dtype=torch.float32)  # [T, k, H]
        for e in range(c.num_experts):
            tok, slot = (ids == e).nonzero(as_tuple=True)  # tokens routed to e, and their slot
            if tok.numel():
                expert_out[tok, slot] = self.mlp(f"{p}experts.{e}.", x[tok]).float()
        y = (expert_out * weights[..., None]).sum(dim=1).to(x.dtype)  # [T, H]
        if c.num_shared_experts:
            y = y + self.mlp(p + "shared_experts.", x)
        return y

    # --- full forward ----------------------------------------------------------------------

    def forward(self, ids: Tensor, visible: Tensor, positions: Tensor | None = None) -> Tensor:
        """ids [N], visible [N, N] (visible[i, j]: query i may attend key j) → logits [N, V] fp32."""
        c, w = self.config, self.w
        N = ids.shape[0]
        assert ids.dim() == 1 and visible.shape == (N, N) and visible.dtype == torch.bool
        assert bool(visible.any(dim=1).all()), "every query needs at least one visible key"
        positions = torch.arange(N) if positions is None else positions  # §4.3.6 absolute
        h = w["model.word_embeddings.weight"][ids]  # [N, H]
        for i in range(c.num_hidden_layers):  # §4.1 pre-norm residual
            p = f"model.layers.{i}."
            x = rms_norm(h, w[p + "input_layernorm.weight"], c.rms_norm_eps)
            h = h + self.attention(i, x, visible, positions)
            x = rms_norm(h, w[p + "post_attention_layernorm.weight"], c.rms_norm_eps)
            h = h + (self.moe(i, x) if c.is_moe_layer(i) else self.mlp(p + "mlp.", x))
        h = rms_norm(h, w["model.norm.weight"], c.rms_norm_eps)  # [N, H]
        head = w["model.word_embeddings.weight" if c.tie_word_embeddings else "lm_head.weight"]
        return (h @ head.T).float()  # [N, V]

    __call__ = forward


def load_weights(model_dir: str | Path) -> dict[str, Tensor]:
    """All tensors of `model.safetensors`, or of the shards named by its index, cast to fp32."""
    d = Path(model_dir)
    index = d / "model.safetensors.index.json"
    weights: dict[str, Tensor] = {}
    if index.exists():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        for shard in sorted(set(weight_map.values())):
            tensors = load_file(d / shard)
            for name in (n for n, f in weight_map.items() if f == shard):
                if name not in tensors:
                    raise ValueError(f"{shard}: index names {name}, which the shard lacks")
                weights[name] = tensors[name]
    elif (d / "model.safetensors").exists():
        weights = load_file(d / "model.safetensors")
    else:
        raise FileNotFoundError(f"{d}: no model.safetensors or model.safetensors.index.json")
    return {name: t.float() for name, t in weights.items()}


def load_reference(model_dir: str | Path) -> ReferenceModel:
    """Build the reference from `config.json` and the (possibly sharded) safetensors."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return ReferenceModel(config, load_weights(model_dir))
