"""OpenAI `logprobs` bodies from the engine's `TokenLogprob`s (docs/openai-api.md says what the
numbers are for block diffusion): chat's `{"content": [...]}` and completions' parallel lists."""

from __future__ import annotations

import math
from typing import Any

from server.core import TokenLogprob
from server.model.tokenizer import TokenizerInfo

FLOOR = -9999.0  # JSON has no -inf: an impossible token (e.g. the mask id) reports this


def _num(x: float) -> float:
    return x if math.isfinite(x) else FLOOR


class LogprobFormatter:
    """Token text is the token decoded alone (special tokens included), as vLLM reports it."""

    def __init__(self, tok: TokenizerInfo) -> None:
        self.tok = tok
        self._text: dict[int, str] = {}

    def text(self, token_id: int) -> str:
        t = self._text.get(token_id)
        if t is None:
            t = self._text[token_id] = self.tok.decode([token_id], skip_special_tokens=False)
        return t

    def _entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        text = self.text(token_id)
        return {"token": text, "logprob": _num(logprob), "bytes": list(text.encode())}

    def chat(self, entries: list[TokenLogprob]) -> dict[str, Any]:
        return {"content": [self._entry(e.token_id, e.logprob) | {
            "top_logprobs": [self._entry(t, lp) for t, lp in e.top]} for e in entries],
                "refusal": None}

    def completion(self, entries: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
        """`offset`: characters of text before the first of these tokens (echo, earlier
        chunks), where `text_offset` starts."""
        tokens = [self.text(e.token_id) for e in entries]
        offsets = []
        for t in tokens:
            offsets.append(offset)
            offset += len(t)
        return {"tokens": tokens, "token_logprobs": [_num(e.logprob) for e in entries],
                # OpenAI's: the chosen token is among its top entries (up to logprobs + 1)
                "top_logprobs": [{self.text(t): _num(lp) for t, lp in e.top}
                                 | {self.text(e.token_id): _num(e.logprob)} for e in entries],
                "text_offset": offsets}

    def completion_echo(self, prompt_ids: list[int], prompt: list[TokenLogprob | None],
                        entries: list[TokenLogprob]) -> dict[str, Any]:
        """`echo` + `logprobs`: the prompt's tokens first (the first has no logprob: null),
        then the output's, one `text_offset` sequence over both."""
        out = self.completion(entries, sum(len(self.text(t)) for t in prompt_ids))
        head = self.completion([e for e in prompt if e is not None],
                               len(self.text(prompt_ids[0])))
        first = self.text(prompt_ids[0])
        return {"tokens": [first, *head["tokens"], *out["tokens"]],
                "token_logprobs": [None, *head["token_logprobs"], *out["token_logprobs"]],
                "top_logprobs": [None, *head["top_logprobs"], *out["top_logprobs"]],
                "text_offset": [0, *head["text_offset"], *out["text_offset"]]}
