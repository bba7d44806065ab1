"""A plain, slow float32 Ling-2.0/LLaDA2 forward written from the spec (llada2-spec §4–§5):
no cache, no batching, per-expert loop. Independent of the engine's model code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file


class ReferenceModel:
    def __init__(self, config: dict, weights: dict[str, torch.Tensor]) -> None:
        self.c = config
        self.w = {k: v.float() for k, v in weights.items()}
        self.nh = config["num_attention_heads"]
        self.nkv = config.get("num_key_value_heads", self.nh)
        self.hd = config.get("head_dim") or config["hidden_size"] // self.nh
        self.rd = int(self.hd * config.get("partial_rotary_factor", 1.0))
        self.eps = config.get("rms_norm_eps", 1e-6)

    def rmsnorm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # §4.2: normalise in fp32, cast back to the input dtype, then multiply by the weight
        xf = x.float()
        return weight * (xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def frequencies(self) -> tuple[torch.Tensor, float]:
        """(θ_j for j < rd/2, scale of cos/sin). §8: YaRN when rope_scaling says so, with the
        Hugging Face conventions: frequencies that turn more than beta_fast (32) times over the
        original context L are kept, those turning fewer than beta_slow (1) times are divided
        by the factor s, a linear ramp over the (floored/ceiled) frequency index in between;
        cos and sin are scaled by 0.1·ln(s) + 1."""
        rd, base = self.rd, self.c.get("rope_theta", 10000.0)
        theta = base ** (-torch.arange(0, rd, 2, dtype=torch.float32) / rd)  # [rd/2]
        sc = self.c.get("rope_scaling") or {}
        if (sc.get("rope_type") or sc.get("type")) != "yarn":
            return theta, 1.0
        L = sc.get("original_max_position_embeddings") or self.c["max_position_embeddings"]
        s = sc.get("factor") or self.c["max_position_embeddings"] / L

        def index_turning(turns: float) -> float:  # j with L·θ_j / 2π == turns
            return rd / 2 * math.log(L / (2 * math.pi * turns)) / math.log(base)

        lo = max(math.floor(index_turning(sc.get("beta_fast") or 32)), 0)
        hi = min(math.ceil(index_turning(sc.get("beta_slow") or 1)), rd - 1)
        hi = hi + 0.001 if hi == lo else hi
        ramp = ((torch.arange(rd // 2, dtype=torch.float32) - lo) / (hi - lo)).clamp(0, 1)
        scaled = theta * (1 - ramp) + theta / s * ramp
        return scaled, (0.1 * math.log(s) + 1.0) if s > 1 else 1.0

    def rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # §4.3: rotate-half on the first rd channels; channel i pairs with i + rd/2
        rd = self.rd
        inv_freq, scale = self.frequencies()
        freqs = positions.float()[:, None] * inv_freq[None, :]  # [N, rd/2]
        emb = torch.cat([freqs, freqs], dim=-1)  # [N, rd]
        cos, sin = emb.cos()[:, None, :] * scale, emb.sin()[:, None, :] * scale  # [N, 1, rd]
        rot, rest = x[..., :rd], x[..., rd:]
        rotated = torch.cat([-rot[..., rd // 2 :], rot[..., : rd // 2]], dim=-1)
        return torch.cat([rot * cos + rotated * sin, rest], dim=-1)

    def attention(self, i: int, x: torch.Tensor, visible: torch.Tensor,
                  positions: torch.Tensor) -> torch.Tensor:
        p = f"model.layers.{i}.attention."
        N = x.shape[0]
        qkv = (x @ self.w[p + "query_key_value.weight"].t()).view(N, self.nh + 2 * self.nkv,
                                                                  self.hd)
        q = qkv[:, : self.nh]  # [N, nh, hd]
        k = qkv[:, self.nh : self.nh + self.nkv]  # [N, nkv, hd]
        v = qkv[:, self.nh + self.nkv :]
        if self.c.get("use_qk_norm", True):
            q = self.rmsnorm(q, self.w[p + "query_layernorm.weight"])
            k = self.rmsnorm(k, self.w[p + "key_layernorm.weight"])
        q, k = self.rope(q, positions), self.rope(k, positions)
        group = self.nh // self.nkv
        out = torch.empty(N, self.nh, self.hd)
        bias = torch.zeros(N, N).masked_fill(~visible, -math.inf)  # additive mask
        for h in range(self.nh):
            kv = h // group  # kv head j serves query heads j*g .. j*g+g-1
            scores = (q[:, h] @ k[:, kv].t()) / math.sqrt(self.hd) + bias  # [N, N]
            out[:, h] = torch.softmax(scores.float(), dim=-1) @ v[:, kv]
        return out.reshape(N, self.nh * self.hd) @ self.w[p + "dense.weight"].t()

    def mlp(self, prefix: str, x: torch.Tensor) -> torch.Tensor:
        gate = x @ self.w[prefix + "gate_proj.weight"].t()
        up = x @ self.w[prefix + "up_proj.weight"].t()
        return (torch.nn.functional.silu(gate) * up) @ self.w[prefix + "down_proj.weight"].t()

    def route(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """§5 steps 1–8 → (expert ids [N, k], weights [N, k]); LLaDA2.2 configs
        (`expert_capacity` > 0) route per block instead (`block_route`)."""
        p = f"model.layers.{i}.mlp.gate."
        E, k = self.c["num_experts"], self.c["num_experts_per_tok"]
        G, TG = self.c.get("n_group", 1), self.c.get("topk_group", 1)
        scores = torch.sigmoid(x.float() @ self.w[p + "weight"].float().t())  # [N, E]
        biased = scores + self.w[p + "expert_bias"].float()  # selection only
        if self.c.get("expert_capacity"):
            return self.block_route(scores, biased)
        per_group = E // G
        group_scores = biased.view(-1, G, per_group).topk(2, dim=-1).values.sum(-1)  # [N, G]
        keep = group_scores.topk(TG, dim=-1).indices
        allowed = torch.zeros(x.shape[0], G, dtype=torch.bool)
        allowed.scatter_(1, keep, True)
        allowed = allowed[:, :, None].expand(-1, G, per_group).reshape(-1, E)
        ids = biased.masked_fill(~allowed, -math.inf).topk(k, dim=-1).indices
        weights = scores.gather(1, ids)
        if k > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return ids, weights * self.c.get("routed_scaling_factor", 1.0)

    def block_route(self, scores: torch.Tensor, biased: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """llada2x-decoding §3.5, one block and one token at a time: the forward's tokens in
        consecutive blocks of `block_size`; a block admits the `expert_capacity` experts whose
        highest biased score over its tokens is largest; each token takes its top-k biased
        scores among the admitted experts (no expert groups); weights are the unbiased scores
        there, renormalised (+1e-20, when k > 1, as §5) and scaled."""
        N, E = scores.shape
        B, C = self.c.get("block_size", 32), self.c["expert_capacity"]
        k = self.c["num_experts_per_tok"]
        assert N % B == 0, f"block routing needs whole {B}-token blocks, got {N} tokens"
        ids = torch.empty(N, k, dtype=torch.long)
        weights = torch.empty(N, k)
        for b in range(0, N, B):
            best = [max(biased[t, j].item() for t in range(b, b + B)) for j in range(E)]
            admitted = sorted(range(E), key=lambda j: best[j], reverse=True)[:C]
            for t in range(b, b + B):
                chosen = sorted(admitted, key=lambda j: biased[t, j].item(), reverse=True)[:k]
                w = scores[t, chosen]
                ids[t] = torch.tensor(chosen)
                weights[t] = w / (w.sum() + 1e-20) if k > 1 else w
        return ids, weights * self.c.get("routed_scaling_factor", 1.0)

    def moe(self, i: int, x: torch.Tensor) -> torch.Tensor:
        ids, weights = self.route(i, x)
        y = torch.zeros(x.shape, dtype=torch.float32)
        for e in range(self.c["num_experts"]):
            rows, slot = (ids == e).nonzero(as_tuple=True)
            if rows.numel():
                out = self.mlp(f"model.layers.{i}.mlp.experts.{e}.", x[rows])
                y.index_add_(0, rows, out.float() * weights[rows, slot][:, None])
        y = y.to(x.dtype)
        if self.c.get("num_shared_experts"):
            y = y + self.mlp(f"model.layers.{i}.mlp.shared_experts.", x)
        return y

    def forward(self, ids: torch.Tensor, visible: torch.Tensor,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """ids [N], visible [N, N] (query i may see key j) → fp32 logits [N, V]."""
        positions = torch.arange(ids.shape[0]) if positions is None else positions
        h = self.w["model.word_embeddings.weight"][ids]  # [N, H]
        for i in range(self.c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = h + self.attention(i, self.rmsnorm(h, self.w[p + "input_layernorm.weight"]),
                                   visible, positions)
            x = self.rmsnorm(h, self.w[p + "post_attention_layernorm.weight"])
            dense = i < self.c.get("first_k_dense_replace", 0) or not self.c.get("num_experts")
            h = h + (self.mlp(p + "mlp.", x) if dense else self.moe(i, x))
        h = self.rmsnorm(h, self.w["model.norm.weight"])
        head = self.w.get("lm_head.weight", self.w["model.word_embeddings.weight"])
        return (h @ head.t()).float()


def load_reference(model_dir: str | Path) -> ReferenceModel:
    d = Path(model_dir)
    config = json.loads((d / "config.json").read_text())
    index = d / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() \
        else ["model.safetensors"]
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(d / f))
    return ReferenceModel(config, weights)
