"""The checkpoint's tokenizer (through transformers) with the ids the engine needs.

Special-token safety: `encode` never turns special-token text inside user text (e.g. a literal
"<|mask|>") into special ids. Only `encode_prompt`, meant for the output of the checkpoint's own
chat template, parses special tokens.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from server.model.specials import MASK_TOKEN, read_special_ids


class TokenizerInfo:
    def __init__(self, model_dir: str | Path) -> None:
        from transformers import PreTrainedTokenizerFast  # LLaDA2 and Ling-2.0 both use it

        self.model_dir = Path(model_dir)
        self.hf = PreTrainedTokenizerFast.from_pretrained(str(self.model_dir))
        ids = read_special_ids(self.model_dir)
        self.mask_id = ids.mask_id
        self.eos_token_ids = ids.eos_ids
        self.pad_id = self.hf.pad_token_id
        self.vocab_size = len(self.hf)

    def encode(self, text: str) -> list[int]:
        """Plain text → ids; special-token text stays ordinary text."""
        return self.hf.encode(text, add_special_tokens=False, split_special_tokens=True)

    def encode_prompt(self, rendered: str) -> list[int]:
        """A rendered chat template → ids, its structure tokens becoming special ids. User
        content inside it must have been escaped before rendering."""
        return self.hf.encode(rendered, add_special_tokens=False)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, Any]],
                            tools: list[dict[str, Any]] | None = None,
                            add_generation_prompt: bool = True) -> str:
        return self.hf.apply_chat_template(messages, tools=tools, tokenize=False,
                                           add_generation_prompt=add_generation_prompt)

    @functools.cached_property
    def special_tokens(self) -> frozenset[str]:
        """Text of every token the tokenizer treats as special (added and marked special)."""
        return frozenset(t.content for t in self.hf.added_tokens_decoder.values() if t.special)

    @functools.cache  # noqa: B019 - one filter per tool parser, alive as long as the tokenizer
    def keeping(self, keep: tuple[str, ...]) -> SpecialFilter:
        """A decoder that skips special tokens except `keep` (e.g. tool-call tags)."""
        return SpecialFilter(self, keep)

    @property
    def has_mask(self) -> bool:
        return self.mask_id is not None and MASK_TOKEN in self.hf.get_vocab()


class SpecialFilter:
    def __init__(self, tok: TokenizerInfo, keep: tuple[str, ...]) -> None:
        self.tok = tok
        self.drop = {i for i, t in tok.hf.added_tokens_decoder.items()
                     if t.special and t.content not in keep}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.drop]
        return self.tok.decode(ids, skip_special_tokens=False)


def load_tokenizer(model_dir: str | Path) -> TokenizerInfo:
    return TokenizerInfo(model_dir)
