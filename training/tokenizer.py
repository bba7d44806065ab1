"""The shared BPE tokenizer (byte-level, LLaDA2 special tokens and chat template from
`server.tiny`) and chat rendering through the same template the server applies."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from server.tiny.tokenizer import SPECIAL_TOKENS, write_tokenizer_files


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Deterministic for the same texts in the same order."""
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


class ChatRenderer:
    """Renders messages with the checkpoint chat template via transformers, exactly as served."""

    def __init__(self, tok: Tokenizer) -> None:
        from transformers import PreTrainedTokenizerFast

        with tempfile.TemporaryDirectory() as d:
            write_tokenizer_files(tok, Path(d), "llada2")
            self.hf = PreTrainedTokenizerFast.from_pretrained(d)

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
               add_generation_prompt: bool = False) -> str:
        return self.hf.apply_chat_template(messages, tools=tools, tokenize=False,
                                           add_generation_prompt=add_generation_prompt)

    def encode(self, text: str) -> list[int]:
        """Rendered template text → ids (its special tokens parsed)."""
        return self.hf.encode(text, add_special_tokens=False)

    def split_example(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
                      ) -> tuple[list[int], list[int]]:
        """(prompt ids through `<role>ASSISTANT</role>`, response ids through `<|role_end|>`)."""
        prompt = self.render(messages[:-1], tools, add_generation_prompt=True)
        full = self.render(messages, tools)
        assert full.startswith(prompt), "template must extend the generation prompt"
        p = self.encode(prompt)
        return p, self.encode(full)[len(p):]
