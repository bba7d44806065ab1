"""Random weights with exactly the checkpoint's tensor names and shapes (llada2-spec §3)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

# `peaky` multiplies lm_head by this: with unit-RMS hidden states a good share of positions
# then has a top-1 probability above 0.95 (see tests/unit/test_tiny_model.py).
PEAKY_SCALE = 12.0
# llada2.2 `peaky`: DELETE (SPLIT) wins the argmax, with a confidence near 1, at positions that
# hold one of its key tokens: the ordinary ids ≡ 3 (≡ 11) mod KEY_PERIOD (`edit_keys`). Each key
# token's embedding gets KEY_GAIN along a unit direction u of its edit id and that id's lm_head
# row is ROW_GAIN·u, so the signal rides the residual stream to the head; elsewhere the edit
# rows are as weak as any other row (tests/unit/test_tiny_model.py measures the rates).
EDIT_KEY_RESIDUES, KEY_PERIOD = {"delete_token_id": 3, "split_token_id": 11}, 16
KEY_GAIN, ROW_GAIN = 8.0, 16.0


def layer_tensors(cfg: dict, i: int, g: torch.Generator, dtype: torch.dtype
                  ) -> Iterator[tuple[str, torch.Tensor]]:
    H, hd = cfg["hidden_size"], cfg["head_dim"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    p = f"model.layers.{i}."

    def lin(out: int, inp: int) -> torch.Tensor:
        return (torch.randn(out, inp, generator=g) * inp ** -0.5).to(dtype)

    def norm(n: int) -> torch.Tensor:
        return (1 + 0.1 * torch.randn(n, generator=g)).to(dtype)

    yield p + "input_layernorm.weight", norm(H)
    yield p + "attention.query_key_value.weight", lin((nh + 2 * nkv) * hd, H)
    yield p + "attention.query_layernorm.weight", norm(hd)
    yield p + "attention.key_layernorm.weight", norm(hd)
    yield p + "attention.dense.weight", lin(H, nh * hd)
    yield p + "post_attention_layernorm.weight", norm(H)
    if i < cfg["first_k_dense_replace"]:
        inter = cfg["intermediate_size"]
        yield p + "mlp.gate_proj.weight", lin(inter, H)
        yield p + "mlp.up_proj.weight", lin(inter, H)
        yield p + "mlp.down_proj.weight", lin(H, inter)
        return
    E, mi = cfg["num_experts"], cfg["moe_intermediate_size"]
    yield p + "mlp.gate.weight", lin(E, H)
    yield p + "mlp.gate.expert_bias", 0.1 * torch.randn(E, generator=g)  # fp32, exercised
    for e in range(E):
        yield p + f"mlp.experts.{e}.gate_proj.weight", lin(mi, H)
        yield p + f"mlp.experts.{e}.up_proj.weight", lin(mi, H)
        yield p + f"mlp.experts.{e}.down_proj.weight", lin(H, mi)
    shared = mi * cfg["num_shared_experts"]
    if shared:
        yield p + "mlp.shared_experts.gate_proj.weight", lin(shared, H)
        yield p + "mlp.shared_experts.up_proj.weight", lin(shared, H)
        yield p + "mlp.shared_experts.down_proj.weight", lin(H, shared)


def edit_keys(cfg: dict, ordinary: int) -> dict[int, list[int]]:
    """LLaDA2.2 edit id → its key tokens among the ordinary ids [0, ordinary) (`peaky`)."""
    return {cfg[k]: list(range(r, ordinary, KEY_PERIOD)) for k, r in EDIT_KEY_RESIDUES.items()
            if cfg.get(k) is not None}


def random_tensors(cfg: dict, seed: int, peaky: bool = False,
                   dtype: torch.dtype = torch.float32, keys: dict[int, list[int]] | None = None
                   ) -> Iterator[tuple[str, torch.Tensor]]:
    """Deterministic for a seed; yields tensors in a fixed order (streams big models).
    `keys` (with `peaky`; `edit_keys`): token ids at which each edit id is made to win."""
    g = torch.Generator().manual_seed(seed)
    V, H = cfg["vocab_size"], cfg["hidden_size"]
    emb = torch.randn(V, H, generator=g)
    keyed = keys if peaky and keys else {}
    own = torch.Generator().manual_seed(seed ^ 0x5EED5EED)  # the other tensors stay as they are
    directions = torch.nn.functional.normalize(torch.randn(len(keyed), H, generator=own), dim=-1)
    for (_, tokens), u in zip(keyed.items(), directions, strict=True):
        emb[tokens] += KEY_GAIN * u
    yield "model.word_embeddings.weight", emb.to(dtype)
    for i in range(cfg["num_hidden_layers"]):
        yield from layer_tensors(cfg, i, g, dtype)
    yield "model.norm.weight", (1 + 0.1 * torch.randn(H, generator=g)).to(dtype)
    head = torch.randn(V, H, generator=g) * H ** -0.5 * (PEAKY_SCALE if peaky else 1.0)
    for edit_id, u in zip(keyed, directions, strict=True):
        head[edit_id] = ROW_GAIN * u
    yield "lm_head.weight", head.to(dtype)


def random_state_dict(cfg: dict, seed: int, peaky: bool = False,
                      dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return dict(random_tensors(cfg, seed, peaky, dtype))
