"""`ModelConfig`: the fields of a Ling-2.0 / LLaDA2 `config.json` that the engine reads."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

# Architecture name → decoding mode. One model implementation serves both.
ARCHITECTURES: dict[str, str] = {
    "LLaDA2MoeModelLM": "diffusion",
    "BailingMoeV2ForCausalLM": "ar",
}


ROUTE_BLOCK = 32  # tokens per routing block when block_size is absent (llada2x-decoding §3.5)


class ModelConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    moe_intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_experts: int
    num_experts_per_tok: int
    num_shared_experts: int
    n_group: int
    topk_group: int
    first_k_dense_replace: int
    routed_scaling_factor: float
    partial_rotary_factor: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    rms_norm_eps: float
    use_qk_norm: bool
    use_qkv_bias: bool
    use_bias: bool
    tie_word_embeddings: bool
    pad_token_id: int | None
    torch_dtype: str | None
    # LLaDA2.2 (llada2x-decoding §3.1, §3.5). Block routing: each `route_block` tokens of a
    # forward admit their top `expert_capacity` experts; 0 = per-token routing (2.0/2.1).
    expert_capacity: int = 0
    route_block: int = ROUTE_BLOCK  # config.json `block_size`
    delete_token_id: int | None = None  # Levenshtein edit ids (config.json only)
    split_token_id: int | None = None

    @property
    def mode(self) -> str:
        """'diffusion' (LLaDA2, block-causal) or 'ar' (Ling-2.0, causal)."""
        return ARCHITECTURES[self.architecture]

    @property
    def block_routing(self) -> bool:
        """Block-routed MoE: decided by `expert_capacity` > 0 alone, never by `n_group`."""
        return self.expert_capacity > 0

    @property
    def levenshtein(self) -> bool:
        """LLaDA2.2 Levenshtein editing (DELETE / SPLIT edit tokens): the config names both
        edit ids. Every block-routed config does (`_validate`), so this is also "is 2.2"."""
        return self.delete_token_id is not None and self.split_token_id is not None

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def num_moe_layers(self) -> int:
        return self.num_hidden_layers - self.first_k_dense_replace

    def is_moe_layer(self, i: int) -> bool:
        return i >= self.first_k_dense_replace and self.num_experts > 0

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config.json") -> ModelConfig:
        archs = d.get("architectures") or []
        arch = next((a for a in archs if a in ARCHITECTURES), None)
        if arch is None:
            raise ModelConfigError(
                f"{source}: unsupported architecture {archs!r}; "
                f"supported: {sorted(ARCHITECTURES)}"
            )
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise ModelConfigError(f"{source}: missing required field(s) {missing}")
        hidden, heads = d["hidden_size"], d["num_attention_heads"]
        rope_scaling = d.get("rope_scaling") or d.get("rope_parameters")
        if rope_scaling is not None:
            rope_scaling = dict(rope_scaling)
            kind = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
            rope_scaling["rope_type"] = kind
            if kind == "default":
                rope_scaling = None
        rope_theta = d.get("rope_theta")
        if rope_theta is None:
            rope_theta = (d.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        cfg = cls(
            architecture=arch,
            model_type=d.get("model_type", ""),
            vocab_size=d["vocab_size"],
            hidden_size=hidden,
            intermediate_size=d["intermediate_size"],
            moe_intermediate_size=d.get("moe_intermediate_size", d["intermediate_size"]),
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads", heads),
            head_dim=d.get("head_dim") or hidden // heads,
            num_experts=d.get("num_experts", 0) or 0,
            num_experts_per_tok=d.get("num_experts_per_tok", 1),
            num_shared_experts=d.get("num_shared_experts", 0) or 0,
            n_group=d.get("n_group", 1) or 1,
            topk_group=d.get("topk_group", 1) or 1,
            first_k_dense_replace=d.get("first_k_dense_replace", 0),
            routed_scaling_factor=float(d.get("routed_scaling_factor", 1.0)),
            partial_rotary_factor=float(d.get("partial_rotary_factor", 1.0)),
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            max_position_embeddings=d.get("max_position_embeddings", 4096),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            use_qk_norm=bool(d.get("use_qk_norm", True)),
            use_qkv_bias=bool(d.get("use_qkv_bias", False)),
            use_bias=bool(d.get("use_bias", False)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            pad_token_id=d.get("pad_token_id"),
            torch_dtype=d.get("torch_dtype") or d.get("dtype"),
            expert_capacity=d.get("expert_capacity") or 0,
            route_block=d.get("block_size") or ROUTE_BLOCK,
            delete_token_id=d.get("delete_token_id"),
            split_token_id=d.get("split_token_id"),
        )
        cfg._validate(source)
        return cfg

    @classmethod
    def from_file(cls, path: str | Path, overrides: dict[str, Any] | None = None
                  ) -> ModelConfig:
        """`overrides` (vLLM's --hf-overrides) replace top-level keys of config.json before it
        is read, e.g. {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelConfigError(f"{path}: not found") from None
        except json.JSONDecodeError as e:
            raise ModelConfigError(f"{path}: invalid JSON ({e})") from None
        source = str(path) + (" with --hf-overrides" if overrides else "")
        return cls.from_dict(d | (overrides or {}), source=source)

    @property
    def max_context(self) -> int:
        """The longest context the model supports: with YaRN, the original context times the
        factor (vLLM's rule; HF YaRN configs keep the original `max_position_embeddings`,
        or name it `original_max_position_embeddings`), else `max_position_embeddings`."""
        if self.rope_scaling is None:
            return self.max_position_embeddings
        orig = self.rope_scaling.get("original_max_position_embeddings") or \
            self.max_position_embeddings
        factor = self.rope_scaling.get("factor") or self.max_position_embeddings / orig
        return max(self.max_position_embeddings, int(orig * factor))

    def _validate(self, source: str) -> None:
        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise ModelConfigError(f"{source}: {msg}")

        check(self.num_attention_heads % self.num_key_value_heads == 0,
              "num_attention_heads must be a multiple of num_key_value_heads")
        check(self.rotary_dim % 2 == 0 and 0 < self.rotary_dim <= self.head_dim,
              f"rotary dim {self.rotary_dim} must be even and within head_dim")
        if self.num_experts > 0:
            per_group = self.num_experts // self.n_group
            check(self.num_experts % self.n_group == 0, "num_experts must divide by n_group")
            check(per_group >= 2 or self.n_group == 1,
                  "each expert group needs >= 2 experts (group score = top-2 sum)")
            check(self.topk_group <= self.n_group, "topk_group must be <= n_group")
            check(self.topk_group * per_group >= self.num_experts_per_tok,
                  "topk_group * experts per group must be >= num_experts_per_tok")
        edit = {"delete_token_id": self.delete_token_id, "split_token_id": self.split_token_id}
        for key, tid in edit.items():
            check(tid is None or (isinstance(tid, int) and 0 <= tid < self.vocab_size),
                  f"{key} {tid!r} must be a token id below vocab_size {self.vocab_size}")
        missing = [k for k, v in edit.items() if v is None]
        check(len(missing) != 1, f"{missing[0] if missing else ''} missing: LLaDA2.2 "
              "Levenshtein editing needs both delete_token_id and split_token_id")
        check(not self.levenshtein or self.delete_token_id != self.split_token_id,
              "delete_token_id and split_token_id must differ")
        check(not self.levenshtein or self.mode == "diffusion",
              "delete_token_id/split_token_id (Levenshtein editing) need a block-diffusion "
              "architecture")
        if self.expert_capacity:
            c, E, k = self.expert_capacity, self.num_experts, self.num_experts_per_tok
            check(self.levenshtein, f"expert_capacity {c} (LLaDA2.2 block routing) without "
                  "the edit token ids: a LLaDA2.2 config.json must name delete_token_id and "
                  "split_token_id")
            check(E > 0, "expert_capacity needs routed experts (num_experts > 0)")
            check(k <= c <= E, f"expert_capacity {c} must be between num_experts_per_tok {k} "
                  f"and num_experts {E}")
            check(self.route_block >= 1, f"block_size {self.route_block} must be >= 1")
            check(self.mode == "diffusion", "expert_capacity (block routing) needs a "
                  "block-diffusion architecture: an AR forward is not made of whole blocks")
        if self.rope_scaling is not None:
            kind = self.rope_scaling["rope_type"]
            check(kind == "yarn", f"unsupported rope_scaling type {kind!r} (supported: yarn)")

    def to_summary(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads")
