"""The tiny checkpoints' tokenizer: byte-level BPE trained on corpus.txt, written as HF files."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = Path(__file__).parent
CORPUS = HERE / "corpus.txt"
CHAT_TEMPLATE = HERE / "chat_template.jinja"
# Appended in this order right after training: with a fixed corpus their ids never change.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|startoftext|>", "<|endoftext|>", "<|mask|>", "<role>", "</role>", "<|role_end|>",
    "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
)
BOS, EOS, MASK, ROLE_END = "<|startoftext|>", "<|endoftext|>", "<|mask|>", "<|role_end|>"
# The stop token named in tokenizer_config.json: LLaDA2 stops on <|endoftext|>, Ling-2.0 chat
# on <|role_end|> (llada2-spec §2, §6.3).
EOS_TOKEN_OF_ARCH = {"llada2": EOS, "ling2": ROLE_END}


@cache
def _trained_json(vocab_size: int) -> str:
    if vocab_size <= 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} leaves no room for merges")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS), min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: no UNK ever
    )
    tok.train_from_iterator([CORPUS.read_text(encoding="utf-8")], trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok.to_str(pretty=True)


def build_tokenizer(vocab_size: int = 1024) -> Tokenizer:
    """Deterministic: the same corpus gives a byte-identical tokenizer.json on every run
    (cached per process; each call returns a fresh object)."""
    return Tokenizer.from_str(_trained_json(vocab_size))


def chat_template() -> str:
    return CHAT_TEMPLATE.read_text(encoding="utf-8")


def special_ids(tok: Tokenizer) -> dict[str, int]:
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        raise ValueError(f"tokenizer lacks special tokens {missing}")
    return ids


def write_tokenizer_files(tok: Tokenizer, out_dir: str | Path, arch: str,
                          model_max_length: int = 2048) -> dict[str, int]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json; return the
    special-token ids."""
    if arch not in EOS_TOKEN_OF_ARCH:
        raise ValueError(f"unknown arch {arch!r}; choose {sorted(EOS_TOKEN_OF_ARCH)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = special_ids(tok)
    (out / "tokenizer.json").write_text(tok.to_str(pretty=True), encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS_TOKEN_OF_ARCH[arch], "pad_token": EOS,
               "mask_token": MASK}
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True} for t, i in ids.items()}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,  # decode must give back the exact text
        "model_max_length": model_max_length,
        "added_tokens_decoder": added,
        **special,
        "chat_template": chat_template(),
    }
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", special)
    return ids


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
