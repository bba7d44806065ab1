"""Chat rendering for training data through the template the server applies. The tokenizer
itself is `server.tiny.tokenizer.train_bpe` (byte-level BPE, LLaDA2 special tokens)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from server.tiny.tokenizer import write_tokenizer_files


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
