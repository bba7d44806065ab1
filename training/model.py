"""Training wrapper around the server's own Ling-2.0 / LLaDA2 modules: a full-sequence forward
with an explicit [B, 1, L, L] attention mask (no KV pages), init, expert-bias balancing and
export to the checkpoint tensor names `server.model.loader` reads."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from server.model.config import ModelConfig
from server.model.llada2_moe import Ling2MoeForward
from server.model.moe import Router
from server.tiny.generate import model_config


class DenseAttention:
    """Stands in for the runner's AttentionContext: rows are B sequences of L tokens."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask  # [B, 1, L, L] bool, True = may attend; every row sees itself
        self.B, self.L = mask.shape[0], mask.shape[-1]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
               ) -> torch.Tensor:
        B, L = self.B, self.L

        def heads(x: torch.Tensor) -> torch.Tensor:  # [B*L, n, hd] → [B, n, L, hd]
            return x.view(B, L, x.shape[1], x.shape[2]).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=self.mask,
                                             enable_gqa=True)  # [B, nh, L, hd]
        return out.transpose(1, 2).reshape(B * L, q.shape[1], q.shape[2])


def training_config(arch: str, vocab_size: int, pad_id: int, shape: dict) -> dict:
    cfg = model_config(arch, vocab_size, pad_id, overrides=shape)
    cfg["routed_scaling_factor"] = 1.0  # trained from scratch: no inherited scale
    return cfg


def build(cfg: dict, seed: int) -> Ling2MoeForward:
    torch.manual_seed(seed)
    model = Ling2MoeForward(ModelConfig.from_dict(cfg))
    H = cfg["hidden_size"]
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or "layernorm" in name:
            torch.nn.init.ones_(p)
        elif "word_embeddings" in name:
            torch.nn.init.normal_(p, std=1.0)
        elif name.endswith("experts.w2") or name.endswith("down_proj.weight") \
                or name.endswith("dense.weight"):
            torch.nn.init.normal_(p, std=0.5 * p.shape[-1] ** -0.5 / cfg["num_hidden_layers"])
        else:
            torch.nn.init.normal_(p, std=H ** -0.5)
    return model


def forward(model: Ling2MoeForward, ids: torch.Tensor, positions: torch.Tensor,
            mask: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """ids/positions [B, L], mask [B, 1, L, L] → pre-norm hidden [B, L, H]. `noise` [B, L, H]
    is added to the input embeddings (zero rows where no noise is wanted)."""
    B, L = ids.shape
    h = model.model.word_embeddings(ids.reshape(-1))  # [B*L, H]
    if noise is not None:
        h = h + noise.reshape(B * L, -1)
    ctx = DenseAttention(mask)
    pos = positions.reshape(-1)
    for layer in model.model.layers:
        h = layer(h, pos, model.rope, ctx)
    return h.view(B, L, -1)


class ExpertBalancer:
    """Auxiliary-loss-free balancing: after each step, expert_bias += rate·sign(mean − load)."""

    def __init__(self, model: torch.nn.Module, rate: float = 1e-3) -> None:
        self.rate = rate
        self.counts: dict[Router, torch.Tensor] = {}
        for m in model.modules():
            if isinstance(m, Router):
                m.register_forward_hook(self._hook)

    def _hook(self, router: Router, _inp: tuple, out: tuple) -> None:
        ids = out[0]  # [T, k]
        c = torch.bincount(ids.flatten(), minlength=router.weight.shape[0]).float()
        self.counts[router] = self.counts.get(router, 0) + c

    @torch.no_grad()
    def step(self) -> None:
        for router, c in self.counts.items():
            router.expert_bias += self.rate * torch.sign(c.mean() - c)
        self.counts.clear()


def hf_tensors(model: Ling2MoeForward, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The module state → checkpoint names (per-expert gate/up/down, split gate_up_proj)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        t = t.detach()
        if name.endswith("experts.w13"):
            half = t.shape[1] // 2
            base = name[: -len("w13")]
            for e in range(t.shape[0]):
                out[f"{base}{e}.gate_proj.weight"] = t[e, :half]
                out[f"{base}{e}.up_proj.weight"] = t[e, half:]
        elif name.endswith("experts.w2"):
            base = name[: -len("w2")]
            for e in range(t.shape[0]):
                out[f"{base}{e}.down_proj.weight"] = t[e]
        elif name.endswith("gate_up_proj.weight"):
            half = t.shape[0] // 2
            base = name[: -len("gate_up_proj.weight")]
            out[base + "gate_proj.weight"], out[base + "up_proj.weight"] = t[:half], t[half:]
        else:
            out[name] = t
    # the router's expert bias stays fp32 (selection only, spec §5)
    return {k: (v.clone() if k.endswith("expert_bias") else v.to(dtype)).contiguous()
            for k, v in out.items()}


def save_weights(model: Ling2MoeForward, cfg: dict, out_dir: Path, dtype: torch.dtype) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = dict(cfg, torch_dtype=str(dtype).removeprefix("torch."))
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(hf_tensors(model, dtype), out_dir / "model.safetensors", metadata={"format": "pt"})
