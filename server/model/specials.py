"""Special token ids (mask, EOS, LLaDA2.2 edit ids) read straight from a checkpoint's files,
without transformers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MASK_TOKEN = "<|mask|>"
EOS_TOKEN = "<|endoftext|>"


@dataclass(frozen=True)
class SpecialIds:
    mask_id: int | None
    eos_ids: tuple[int, ...]
    # LLaDA2.2 Levenshtein edit ids (config.json `delete_token_id` / `split_token_id`; the real
    # checkpoint has no added token for them); None before 2.2
    delete_id: int | None = None
    split_id: int | None = None


def read_special_ids(model_dir: Path) -> SpecialIds:
    """Mask id from the tokenizer's `<|mask|>`; EOS ids from generation_config.json
    (`eos_token_id`, int or list: LLaDA2.2 lists two), else the tokenizer's `<|endoftext|>`;
    the edit ids from config.json (`ModelConfig` validates them)."""
    added: dict[str, int] = {}
    tok_file = model_dir / "tokenizer.json"
    if tok_file.exists():
        tok = json.loads(tok_file.read_text())
        added = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
        vocab = tok.get("model", {}).get("vocab", {})
        for name in (MASK_TOKEN, EOS_TOKEN):
            if name not in added and isinstance(vocab, dict) and name in vocab:
                added[name] = vocab[name]
    gen = _read_json(model_dir / "generation_config.json")
    eos = gen.get("eos_token_id")
    if eos is None:
        eos = added.get(EOS_TOKEN)
    eos_ids = tuple(int(e) for e in eos) if isinstance(eos, list) else \
        (() if eos is None else (int(eos),))
    cfg = _read_json(model_dir / "config.json")
    return SpecialIds(mask_id=added.get(MASK_TOKEN, gen.get("mask_token_id")), eos_ids=eos_ids,
                      delete_id=cfg.get("delete_token_id"), split_id=cfg.get("split_token_id"))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}
