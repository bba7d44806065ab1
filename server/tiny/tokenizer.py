"""A deterministic byte-level BPE tokenizer trained on the shipped corpus, with the LLaDA2
special tokens and chat template, written as Hugging Face tokenizer files."""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: a checkpoint without tokenizer files needs no package
    from tokenizers import Tokenizer

HERE = Path(__file__).parent
# Fixed order: ids are stable (they follow the trained vocabulary).
SPECIAL_TOKENS = (
    "<|startoftext|>", "<|endoftext|>", "<|mask|>", "<role>", "</role>", "<|role_end|>",
    "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
)
# LLaDA2.2 Levenshtein edit tokens, appended after the trained vocabulary by the llada2.2 tiny
# model only (so the other tiny tokenizers keep their ids). Our own names: the real checkpoint
# has no added token for DELETE 156930 / SPLIT 156931, only config.json's ids.
EDIT_TOKENS = ("<|delete|>", "<|split|>")
# What `build_tokenizer()` gives (tests/unit/test_dummy_weights.py checks it): its size and the
# ids of the special and edit tokens, so that a directory written without tokenizer files
# (`make_tiny_model(tokenizer=False)`) has the ids a tokenizer would give, and needs no package.
TINY_TOKENIZER_SIZE = 786
TINY_TOKEN_IDS = {t: 776 + i for i, t in enumerate((*SPECIAL_TOKENS, *EDIT_TOKENS))}


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE with the special tokens appended; same texts in the same order → same
    tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS), min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


@cache
def _trained_json(vocab_size: int) -> str:
    text = (HERE / "corpus.txt").read_text(encoding="utf-8")
    return train_bpe([p for p in text.split("\n\n") if p], vocab_size).to_str()


def build_tokenizer(vocab_size: int = 1024) -> Tokenizer:
    """Same corpus and settings → byte-identical tokenizer.json on every run."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_trained_json(vocab_size))


def chat_template() -> str:
    return (HERE / "chat_template.jinja").read_text(encoding="utf-8")


def write_tokenizer_files(tok: Tokenizer, out_dir: Path, arch: str,
                          extra: tuple[str, ...] = ()) -> dict[str, int]:
    """tokenizer.json, tokenizer_config.json, special_tokens_map.json; returns the ids of
    SPECIAL_TOKENS and of the `extra` special tokens (added to `tok` here)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if extra:
        tok.add_special_tokens(list(extra))
    (out_dir / "tokenizer.json").write_text(tok.to_str(pretty=True), encoding="utf-8")
    ids: dict[str, int] = {}
    for t in (*SPECIAL_TOKENS, *extra):
        i = tok.token_to_id(t)
        assert i is not None, f"the tokenizer lacks special token {t}"
        ids[t] = i
    eos = "<|role_end|>" if arch == "ling2" else "<|endoftext|>"
    special = {"bos_token": "<|startoftext|>", "eos_token": eos, "pad_token": "<|endoftext|>",
               "mask_token": "<|mask|>"}
    added = {str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                      "normalized": False, "single_word": False} for t, i in ids.items()}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False,
        "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "model_max_length": 1 << 20, "added_tokens_decoder": added,
        "chat_template": chat_template(), **special,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return ids
