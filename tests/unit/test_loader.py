"""Checkpoint loading: hub ids through the local HF cache, shards, dtypes, and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from server.model.config import ModelConfig, ModelConfigError
from server.model.loader import CheckpointError, load_model, resolve_model_path

CPU = torch.device("cpu")


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def load(d: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    return load_model(d, ModelConfig.from_file(d / "config.json"), dtype, CPU)


def test_hub_id_resolves_offline_from_the_cache(tiny_llada2: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "hub" / "models--acme--tiny-llada2"
    copy_model(tiny_llada2, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    assert resolve_model_path("acme/tiny-llada2") == repo / "snapshots" / "0123abcd"
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        resolve_model_path("acme/absent")


def test_sharded_equals_single_and_dtypes(tiny_llada2: Path, tmp_path: Path) -> None:
    d = copy_model(tiny_llada2, tmp_path / "sharded")
    tensors = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half],
              "model-00002-of-00002.safetensors": names[half:]}
    for fname, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, d / fname)
    index = {"weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    a, b = load(tiny_llada2).state_dict(), load(d).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    bf = load(tiny_llada2, torch.bfloat16)
    assert bf.lm_head.weight.dtype == torch.bfloat16
    router = bf.model.layers[1].mlp.gate
    assert router.weight.dtype == router.expert_bias.dtype == torch.float32  # router stays fp32


def test_errors_name_the_file_and_tensor(tiny_llada2: Path, tmp_path: Path) -> None:
    d = copy_model(tiny_llada2, tmp_path / "bad")
    tensors = load_file(d / "model.safetensors")
    name = "model.layers.1.attention.dense.weight"
    broken = dict(tensors)
    broken[name] = torch.zeros(3, 3)
    save_file(broken, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor .*dense\.weight.*"
                                              r"shape \(3, 3\)"):
        load(d)
    missing = dict(tensors)
    del missing["model.layers.1.mlp.experts.3.up_proj.weight"]
    save_file(missing, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"lacks 1 tensor.*experts\.w13"):
        load(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load(d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(cfg | {"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ModelConfigError, match="config.json: unsupported architecture"):
        ModelConfig.from_file(d / "config.json")
    with pytest.raises(ModelConfigError, match="not found"):
        ModelConfig.from_file(tmp_path / "nowhere" / "config.json")
    with pytest.raises(CheckpointError, match="not a model directory"):
        resolve_model_path(str(tmp_path / "nowhere"))
