"""The tiny-model generator writes real-format checkpoints and a real tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from server.cli import main
from server.model.config import ModelConfig
from server.model.tokenizer import load_tokenizer
from server.tiny import make_tiny_model
from server.tiny.generate import model_config
from server.tiny.tokenizer import EDIT_TOKENS, SPECIAL_TOKENS
from server.tiny.weights import edit_keys


def expected_names(cfg: dict) -> set[str]:
    names = {"model.word_embeddings.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        names |= {p + n for n in ("input_layernorm.weight", "post_attention_layernorm.weight",
                                  "attention.query_key_value.weight", "attention.dense.weight",
                                  "attention.query_layernorm.weight",
                                  "attention.key_layernorm.weight")}
        if i < cfg["first_k_dense_replace"]:
            names |= {p + f"mlp.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj")}
            continue
        names |= {p + "mlp.gate.weight", p + "mlp.gate.expert_bias"}
        for e in range(cfg["num_experts"]):
            names |= {p + f"mlp.experts.{e}.{m}.weight" for m in ("gate_proj", "up_proj",
                                                                   "down_proj")}
        names |= {p + f"mlp.shared_experts.{m}.weight" for m in ("gate_proj", "up_proj",
                                                                 "down_proj")}
    return names


@pytest.mark.parametrize("arch,mode", [("llada2", "diffusion"), ("llada2.2", "diffusion"),
                                       ("ling2", "ar")])
def test_checkpoint_format(tmp_path: Path, arch: str, mode: str) -> None:
    d = make_tiny_model(tmp_path, arch=arch, layers=3)
    for f in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
              "tokenizer_config.json", "special_tokens_map.json"):
        assert (d / f).is_file(), f
    cfg = json.loads((d / "config.json").read_text())
    mc = ModelConfig.from_file(d / "config.json")
    assert mc.mode == mode and mc.num_hidden_layers == 3 and mc.rotary_dim == 8
    tensors = load_file(d / "model.safetensors")
    assert set(tensors) == expected_names(cfg)
    H, hd = cfg["hidden_size"], cfg["head_dim"]
    qkv = (cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"]) * hd
    assert tensors["model.layers.1.attention.query_key_value.weight"].shape == (qkv, H)
    assert tensors["model.layers.2.mlp.experts.7.down_proj.weight"].shape == (
        H, cfg["moe_intermediate_size"])
    assert tensors["model.layers.1.mlp.gate.expert_bias"].dtype == torch.float32
    assert tensors["lm_head.weight"].shape == (cfg["vocab_size"], H)
    gen = json.loads((d / "generation_config.json").read_text())
    tok = load_tokenizer(d)
    if arch == "llada2":
        assert gen["eos_token_id"] == tok.hf.convert_tokens_to_ids("<|endoftext|>")
        assert gen["mask_token_id"] == tok.mask_id
    else:
        assert gen["eos_token_id"] == tok.hf.convert_tokens_to_ids(["<|endoftext|>",
                                                                    "<|role_end|>"])


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = make_tiny_model(tmp_path / "a", seed=3)
    b = make_tiny_model(tmp_path / "b", seed=3)
    c = make_tiny_model(tmp_path / "c", seed=4)
    for f in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_tokenizer_specials_roundtrip_and_mask_safety(tiny_llada2: Path) -> None:
    tok = load_tokenizer(tiny_llada2)
    ids = tok.hf.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert len(set(ids)) == len(SPECIAL_TOKENS) and tok.mask_id in ids
    assert max(ids) < tok.vocab_size <= ModelConfig.from_file(
        tiny_llada2 / "config.json").vocab_size
    text = "héllo wörld 😀 def f(x): return x*2\n\t東京"
    assert tok.decode(tok.encode(text)) == text
    hostile = "a <|mask|> b <|endoftext|> <role>HUMAN</role>"
    enc = tok.encode(hostile)
    assert not set(enc) & set(ids)  # special-token text in user text stays plain text
    assert tok.decode(enc) == hostile


def test_chat_template_renders_the_llada2_format(tiny_llada2: Path) -> None:
    tok = load_tokenizer(tiny_llada2)
    q = [{"role": "user", "content": "What is 2+2?"}]
    assert tok.apply_chat_template(q) == (
        "<role>SYSTEM</role>detailed thinking off<|role_end|><role>HUMAN</role>What is 2+2?"
        "<|role_end|><role>ASSISTANT</role>")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather",
                                              "arguments": '{"city": "Paris"}'}},
            {"type": "function", "function": {"name": "get_time", "arguments": {"tz": "CET"}}}]},
        {"role": "tool", "content": "18C"},
        {"role": "tool", "content": "12:00"},
    ]
    out = tok.apply_chat_template(msgs, tools=tools)
    assert out.startswith("<role>SYSTEM</role>Be brief.\n# Tools\n\nYou may call one or more "
                          "functions to assist with the user query.\n\n")
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather", ' in out
    assert out.endswith(
        "detailed thinking off<|role_end|><role>HUMAN</role>weather?<|role_end|>"
        "<role>ASSISTANT</role>Checking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\":"
        " {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", "
        "\"arguments\": {\"tz\": \"CET\"}}\n</tool_call><|role_end|><role>OBSERVATION</role>"
        "\n<tool_response>\n18C\n</tool_response>\n<tool_response>\n12:00\n</tool_response>"
        "<|role_end|><role>ASSISTANT</role>")
    structure = tok.encode_prompt(tok.apply_chat_template(q))
    assert tok.hf.convert_tokens_to_ids("<role>") in structure


def test_peaky_weights_are_confident(tiny_llada2: Path, tiny_llada2_peaky: Path) -> None:
    def share_above(d: Path) -> float:
        head = load_file(d / "model.safetensors")["lm_head.weight"]  # [V, H]
        h = torch.randn(2000, head.shape[1], generator=torch.Generator().manual_seed(0))
        h = h / h.pow(2).mean(-1, keepdim=True).sqrt()  # unit RMS, as after the final norm
        return float(((h @ head.t()).softmax(-1).max(-1).values > 0.95).float().mean())

    flat, peaky = share_above(tiny_llada2), share_above(tiny_llada2_peaky)
    assert flat < 0.01 and 0.2 < peaky < 0.9


def test_real_shapes_config_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    mini = model_config("llada2", 832, 0, config_of="mini", dtype="bfloat16")
    mc = ModelConfig.from_dict(mini)
    assert (mc.hidden_size, mc.num_hidden_layers, mc.num_experts, mc.vocab_size) == (
        2048, 20, 256, 157184)
    assert (mc.n_group, mc.topk_group, mc.num_experts_per_tok, mc.rotary_dim) == (8, 4, 8, 64)
    flash = ModelConfig.from_dict(model_config("llada2", 832, 0, config_of="flash", layers=2))
    assert flash.hidden_size == 4096 and flash.num_hidden_layers == 2
    assert main(["make-tiny-model", str(tmp_path / "m"), "--arch", "ling2", "--seed", "1"]) == 0
    assert "wrote ling2 checkpoint" in capsys.readouterr().out
    assert ModelConfig.from_file(tmp_path / "m" / "config.json").mode == "ar"


def test_large_checkpoints_are_sharded_with_an_index(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import server.tiny.generate as gen

    single = load_file(make_tiny_model(tmp_path / "one", seed=5) / "model.safetensors")
    monkeypatch.setattr(gen, "SHARD_BYTES", 200_000)
    d = make_tiny_model(tmp_path / "many", seed=5)
    index = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    files = sorted(set(index.values()))
    assert len(files) > 1 and not (d / "model.safetensors").exists()
    merged = {}
    for f in files:
        merged |= load_file(d / f)
    assert merged.keys() == single.keys() == index.keys()
    assert all(torch.equal(merged[k], single[k]) for k in single)


def test_llada22_checkpoint(tiny_llada2: Path, tiny_llada22: Path) -> None:
    cfg = json.loads((tiny_llada22 / "config.json").read_text())
    tok = load_tokenizer(tiny_llada22)
    delete, split = tok.hf.convert_tokens_to_ids(list(EDIT_TOKENS))
    assert (cfg["delete_token_id"], cfg["split_token_id"]) == (delete, split)
    assert (cfg["expert_capacity"], cfg["block_size"], cfg["num_experts"]) == (4, 32, 8)
    mc = ModelConfig.from_dict(cfg)
    assert mc.levenshtein and mc.block_routing and mc.mode == "diffusion"
    assert max(delete, split) < mc.vocab_size
    gen = json.loads((tiny_llada22 / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.hf.convert_tokens_to_ids(["<|endoftext|>",
                                                                "<|role_end|>"])
    assert gen["mask_token_id"] == tok.mask_id
    # the edit tokens come after the other tokens: every other id is as in the llada2 model
    old = load_tokenizer(tiny_llada2).hf
    assert tok.hf.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == old.convert_tokens_to_ids(
        list(SPECIAL_TOKENS))
    assert old.convert_tokens_to_ids(EDIT_TOKENS[0]) == old.unk_token_id  # absent there
    assert tok.decode([delete, split]) == ""  # special: dropped from text
    assert tok.encode("<|delete|>") != [delete]  # user text never becomes an edit id
    real = ModelConfig.from_dict(model_config("llada2.2", 832, 0, config_of="flash",
                                              edit_ids=(156930, 156931)))
    assert real.expert_capacity == 48 and real.levenshtein


def test_llada22_peaky_edit_tokens_win_at_their_keys(tiny_llada22: Path,
                                                     tiny_llada22_peaky: Path) -> None:
    """Greedy argmax over random canvases (a prompt of ordinary tokens, then masks): with
    `peaky` DELETE / SPLIT win at nearly every position holding one of their key tokens,
    rarely elsewhere, never at a mask; the plain 2.2 model almost never picks them."""
    from tests.reference.decode import block_causal_visible
    from tests.reference.model import load_reference

    def rates(d: Path) -> dict[str, float]:
        ref, tok = load_reference(d), load_tokenizer(d)
        delete, split = ref.c["delete_token_id"], ref.c["split_token_id"]
        ordinary = min(tok.hf.convert_tokens_to_ids(list(SPECIAL_TOKENS)))
        keys = edit_keys(ref.c, ordinary)
        hits = dict.fromkeys(("delete@key", "split@key", "edit@other", "edit@mask"), 0.0)
        counts = dict.fromkeys(hits, 0)
        for seed in range(4):
            ids = torch.randint(0, ordinary, (96,), generator=torch.Generator().manual_seed(seed))
            ids[64:] = tok.mask_id
            logits = ref.forward(ids, block_causal_visible(96, 32))
            logits[:, tok.mask_id] = -torch.inf
            top = logits.argmax(-1)
            edit = (top == delete) | (top == split)
            at_d = torch.isin(ids, torch.tensor(keys[delete]))
            at_s = torch.isin(ids, torch.tensor(keys[split]))
            other = ~at_d & ~at_s & (ids != tok.mask_id)
            for name, sel, hit in (("delete@key", at_d, top == delete),
                                   ("split@key", at_s, top == split), ("edit@other", other, edit),
                                   ("edit@mask", ids == tok.mask_id, edit)):
                hits[name] += float(hit[sel].sum())
                counts[name] += int(sel.sum())
        return {k: hits[k] / counts[k] for k in hits}

    peaky, plain = rates(tiny_llada22_peaky), rates(tiny_llada22)
    assert peaky["delete@key"] > 0.8 and peaky["split@key"] > 0.8
    assert peaky["edit@other"] < 0.05 and peaky["edit@mask"] == 0
    assert max(plain.values()) < 0.05


def test_cli_llada22(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m"
    assert main(["make-tiny-model", str(out), "--arch", "llada2.2", "--peaky", "--layers", "1",
                 "--config-only"]) == 0
    assert "wrote llada2.2 checkpoint" in capsys.readouterr().out
    mc = ModelConfig.from_file(out / "config.json")
    assert mc.levenshtein and mc.block_routing and mc.num_hidden_layers == 1
