"""`make_tiny_model`: a random checkpoint in the real on-disk format (config.json with the real
field names, safetensors with the real tensor names, generation_config.json, tokenizer)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from server.tiny.tokenizer import (
    EDIT_TOKENS,
    SPECIAL_TOKENS,
    TINY_TOKEN_IDS,
    TINY_TOKENIZER_SIZE,
    build_tokenizer,
    write_tokenizer_files,
)
from server.tiny.weights import edit_keys, random_tensors

SHARD_BYTES = 4 << 30
ARCHS = {
    "llada2": ("LLaDA2MoeModelLM", "llada2_moe"),
    "llada2.2": ("LLaDA2MoeModelLM", "llada2_moe"),  # + edit ids, block routing (2.2 keys)
    "ling2": ("BailingMoeV2ForCausalLM", "bailing_moe_v2"),
}
# LLaDA2.2 block routing (llada2x-decoding §3.1): experts admitted per 32-token block; the real
# 48 of 256, the tiny 4 of 8 (so routing differs from per-token top-2 over all 8)
EXPERT_CAPACITY = {"tiny": 4, "real": 48}
TINY = dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8,
            num_experts_per_tok=2, n_group=2, topk_group=1, num_shared_experts=1,
            max_position_embeddings=2048, num_hidden_layers=2)
# llada2-spec §1 (LLaDA2.0-mini / -flash)
REAL = {
    "mini": dict(hidden_size=2048, intermediate_size=5120, moe_intermediate_size=512,
                 num_attention_heads=16, num_key_value_heads=4, head_dim=128, num_experts=256,
                 num_experts_per_tok=8, n_group=8, topk_group=4, num_shared_experts=1,
                 max_position_embeddings=16384, num_hidden_layers=20, vocab_size=157184),
    "flash": dict(hidden_size=4096, intermediate_size=9216, moe_intermediate_size=1024,
                  num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=256,
                  num_experts_per_tok=8, n_group=8, topk_group=4, num_shared_experts=1,
                  max_position_embeddings=16384, num_hidden_layers=32, vocab_size=157184),
}


def model_config(arch: str, vocab_size: int, pad_id: int, layers: int | None = None,
                 config_of: str | None = None, dtype: str = "float32",
                 overrides: dict | None = None, edit_ids: tuple[int, int] | None = None
                 ) -> dict:
    """`edit_ids` (DELETE, SPLIT): llada2.2 only, where they are required."""
    name, model_type = ARCHS[arch]
    if (arch == "llada2.2") != (edit_ids is not None):
        raise ValueError("edit_ids (DELETE, SPLIT) are given for llada2.2 and only for it")
    shape = dict(REAL[config_of]) if config_of else dict(TINY, vocab_size=vocab_size)
    if edit_ids is not None:
        shape.update(delete_token_id=edit_ids[0], split_token_id=edit_ids[1], block_size=32,
                     expert_capacity=EXPERT_CAPACITY["real" if config_of else "tiny"])
    shape.update(overrides or {})
    if layers is not None:
        shape["num_hidden_layers"] = layers
    return {
        "architectures": [name], "model_type": model_type, **shape,
        "first_k_dense_replace": 1, "routed_scaling_factor": 2.5, "score_function": "sigmoid",
        "moe_router_enable_expert_bias": True, "router_dtype": "fp32", "norm_topk_prob": True,
        "norm_head": False, "norm_softmax": False, "use_qk_norm": True, "use_qkv_bias": False,
        "use_bias": False, "partial_rotary_factor": 0.5, "rotary_dim": shape["head_dim"] // 2,
        "rope_theta": 600000.0, "rope_scaling": None, "rms_norm_eps": 1e-6,
        "hidden_act": "silu", "tie_word_embeddings": False, "pad_token_id": pad_id,
        "attention_dropout": 0.0, "embedding_dropout": 0.0, "output_dropout": 0.0,
        "use_cache": False, "torch_dtype": dtype,
    }


def make_tiny_model(out_dir: str | Path, arch: str = "llada2", seed: int = 0,
                    layers: int | None = None, peaky: bool = False,
                    config_of: str | None = None, dtype: str | None = None,
                    overrides: dict | None = None, weights: bool = True,
                    tokenizer: bool = True) -> Path:
    """`overrides` replaces config fields (e.g. a wider "small" benchmark shape). `weights`
    False writes everything but the safetensors: enough for `unmask serve --check-config` at
    the real mini/flash shapes, and for an engine with `load_format="dummy"`. `tokenizer`
    False also leaves out the tokenizer files (the ids stay those the tokenizer would give;
    neither `tokenizers` nor `safetensors` is imported without weights): enough for `Engine`,
    which takes token ids. `peaky` sharpens the output head; for llada2.2 it also makes
    DELETE and SPLIT win the argmax at positions holding their key tokens (`weights`)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose {sorted(ARCHS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    llada22 = arch == "llada2.2"
    extra = EDIT_TOKENS if llada22 else ()
    if tokenizer:
        tok = build_tokenizer()
        ids = write_tokenizer_files(tok, out, arch, extra)
        size = tok.get_vocab_size()
    else:
        ids = {t: TINY_TOKEN_IDS[t] for t in (*SPECIAL_TOKENS, *extra)}
        size = TINY_TOKENIZER_SIZE + len(extra)
    vocab = -(-size // 64) * 64
    dtype = dtype or ("bfloat16" if config_of else "float32")
    edit = (ids[EDIT_TOKENS[0]], ids[EDIT_TOKENS[1]]) if llada22 else None
    cfg = model_config(arch, vocab, ids["<|endoftext|>"], layers, config_of, dtype, overrides,
                       edit)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    # Ling-2.0 and LLaDA2.2 list two EOS ids
    eos = ids["<|endoftext|>"] if arch == "llada2" else [ids["<|endoftext|>"],
                                                         ids["<|role_end|>"]]
    gen = ({"eos_token_id": eos, "bos_token_id": ids["<|startoftext|>"],
            "pad_token_id": ids["<|endoftext|>"]} if arch == "ling2" else
           {"eos_token_id": eos, "pad_token_id": ids["<|endoftext|>"],
            "mask_token_id": ids["<|mask|>"]})
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    if weights:
        keys = edit_keys(cfg, ordinary=min(ids.values()))  # the specials follow the BPE ids
        _write_weights(out, random_tensors(cfg, seed, peaky, getattr(torch, dtype), keys))
    return out


def _write_weights(out: Path, tensors: Iterator[tuple[str, torch.Tensor]]) -> None:
    """One model.safetensors, or HF-style shards + index once the total passes SHARD_BYTES.
    Tensors stream through: at most one shard is held in memory."""
    from safetensors.torch import save_file

    shards: list[list[str]] = []
    pending: dict[str, torch.Tensor] = {}
    size = 0

    def flush() -> None:
        nonlocal pending, size
        shards.append(list(pending))
        save_file(pending, out / f"shard-{len(shards)}.tmp", metadata={"format": "pt"})
        pending, size = {}, 0

    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        if pending and size + nbytes > SHARD_BYTES:
            flush()
        pending[name] = t.contiguous()
        size += nbytes
    flush()
    if len(shards) == 1:
        (out / "shard-1.tmp").rename(out / "model.safetensors")
        return
    n = len(shards)
    files = [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    for i, f in enumerate(files, start=1):
        (out / f"shard-{i}.tmp").rename(out / f)
    weight_map = {k: f for f, keys in zip(files, shards, strict=True) for k in keys}
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2) + "\n")
