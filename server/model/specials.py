"""Special token ids (mask, EOS) read straight from a checkpoint's files, without transformers."""

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


def read_special_ids(model_dir: Path) -> SpecialIds:
    """Mask id from the tokenizer's `<|mask|>`; EOS ids from generation_config.json
    (`eos_token_id`, int or list), else the tokenizer's `<|endoftext|>`."""
    added: dict[str, int] = {}
    tok_file = model_dir / "tokenizer.json"
    if tok_file.exists():
        tok = json.loads(tok_file.read_text())
        added = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
        vocab = tok.get("model", {}).get("vocab", {})
        for name in (MASK_TOKEN, EOS_TOKEN):
            if name not in added and isinstance(vocab, dict) and name in vocab:
                added[name] = vocab[name]
    gen: dict = {}
    gen_file = model_dir / "generation_config.json"
    if gen_file.exists():
        gen = json.loads(gen_file.read_text())
    eos = gen.get("eos_token_id")
    if eos is None:
        eos = added.get(EOS_TOKEN)
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
    return SpecialIds(mask_id=added.get(MASK_TOKEN, gen.get("mask_token_id")), eos_ids=eos_ids)
