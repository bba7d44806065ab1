"""`load_format="dummy"`: random weights from config.json alone (no safetensors read), the same
for the same seed, with the loader's dtype rules and scales; tensor-parallel shards agree on
the replicated tensors; an unknown format is refused. `make_tiny_model(tokenizer=False)`
writes a directory an `Engine` runs from without any tokenizer package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from server import LLM, SamplingParams
from server.core import GenerateRequest
from server.model.config import ModelConfig
from server.model.loader import load_model
from server.model.parallel import TPGroup
from server.tiny import make_tiny_model
from server.tiny.tokenizer import (
    EDIT_TOKENS,
    SPECIAL_TOKENS,
    TINY_TOKEN_IDS,
    TINY_TOKENIZER_SIZE,
    build_tokenizer,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def config_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """config.json, generation_config.json and the tokenizer files: no weights."""
    return make_tiny_model(tmp_path_factory.mktemp("dummy"), arch="llada2", weights=False)


def _generate(model_dir: Path) -> list[list[int]]:
    with LLM(str(model_dir), load_format="dummy", num_pages=64) as llm:
        outs = llm.generate(["Hello there", "a b c", [5, 6, 7]],
                            SamplingParams(max_tokens=40, ignore_eos=True))
    return [o.token_ids for o in outs]


def test_llm_with_dummy_weights_generates_the_same_tokens_twice(config_only: Path) -> None:
    assert not list(config_only.glob("*.safetensors"))
    first, second = _generate(config_only), _generate(config_only)
    assert all(len(t) == 40 for t in first)
    assert first == second


def test_dummy_init_scales_dtypes_and_no_file_read(tmp_path: Path) -> None:
    d = make_tiny_model(tmp_path / "m", arch="llada2", weights=False, tokenizer=False)
    cfg_json = json.loads((d / "config.json").read_text())
    cfg_json["initializer_range"] = 0.05
    (d / "config.json").write_text(json.dumps(cfg_json))
    (d / "model.safetensors").write_text("not a safetensors file: never opened")
    cfg = ModelConfig.from_file(d / "config.json")
    a = load_model(d, cfg, torch.bfloat16, CPU, load_format="dummy").state_dict()
    b = load_model(d, cfg, torch.bfloat16, CPU, load_format="dummy").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    layer = "model.layers.1."
    assert a[layer + "mlp.gate.weight"].dtype == torch.float32  # the router stays fp32
    assert a[layer + "mlp.gate.expert_bias"].dtype == torch.float32
    assert torch.equal(a[layer + "mlp.gate.expert_bias"], torch.zeros(cfg.num_experts))
    assert a[layer + "mlp.experts.w13"].dtype == torch.bfloat16
    assert torch.all(a["model.norm.weight"] == 1) and torch.all(
        a[layer + "attention.query_layernorm.weight"] == 1)
    w = a["lm_head.weight"].float()
    assert abs(w.std().item() - 0.05) < 0.005 and abs(w.mean().item()) < 0.005
    assert not torch.equal(a["lm_head.weight"], a["model.word_embeddings.weight"])


def test_dummy_under_tensor_parallelism_replicates_what_is_replicated(tmp_path: Path) -> None:
    d = make_tiny_model(tmp_path / "m", arch="llada2", weights=False, tokenizer=False)
    cfg = ModelConfig.from_file(d / "config.json")
    ranks = [load_model(d, cfg, torch.float32, CPU, tp=TPGroup(r, 2), load_format="dummy")
             .state_dict() for r in range(2)]
    for name in ("model.norm.weight", "model.layers.1.mlp.gate.weight",
                 "model.layers.1.post_attention_layernorm.weight"):
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    vp = ranks[1]["lm_head.weight"].shape[0]  # rows per rank; the last shard's pad is zero
    assert torch.all(ranks[1]["lm_head.weight"][cfg.vocab_size - vp:] == 0)


def test_unknown_load_format_is_refused(tmp_path: Path) -> None:
    d = make_tiny_model(tmp_path / "m", arch="llada2", weights=False, tokenizer=False)
    cfg = ModelConfig.from_file(d / "config.json")
    with pytest.raises(ValueError, match="'npz'"):
        load_model(d, cfg, torch.float32, CPU, load_format="npz")


def test_engine_runs_from_a_folder_without_tokenizer_files(tmp_path: Path) -> None:
    from server.engine.engine import Engine
    from server.engine.llm import engine_config

    for arch in ("llada2", "ling2"):
        d = make_tiny_model(tmp_path / arch, arch=arch, weights=False, tokenizer=False)
        assert sorted(p.name for p in d.iterdir()) == ["config.json", "generation_config.json"]
        engine = Engine(engine_config(str(d), load_format="dummy", num_pages=32))
        engine.add_request(GenerateRequest("r", (1, 2, 3), SamplingParams(max_tokens=8,
                                                                           ignore_eos=True)))
        tokens: list[int] = []
        while engine.has_work():
            for o in engine.step().outputs:
                tokens += o.new_token_ids
        assert len(tokens) == 8


def test_tokenizer_free_ids_are_the_tokenizers() -> None:
    tok = build_tokenizer()
    assert tok.get_vocab_size() == TINY_TOKENIZER_SIZE
    tok.add_special_tokens(list(EDIT_TOKENS))
    assert {t: tok.token_to_id(t) for t in (*SPECIAL_TOKENS, *EDIT_TOKENS)} == TINY_TOKEN_IDS


@pytest.mark.parametrize("arch", ["llada2", "llada2.2", "ling2"])
def test_tokenizer_free_config_matches(tmp_path: Path, arch: str) -> None:
    with_tok = make_tiny_model(tmp_path / "a", arch=arch, weights=False)
    without = make_tiny_model(tmp_path / "b", arch=arch, weights=False, tokenizer=False)
    for name in ("config.json", "generation_config.json"):
        assert (with_tok / name).read_text() == (without / name).read_text()
