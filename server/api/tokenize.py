"""`POST /tokenize` and `POST /detokenize` in vLLM's shapes. A prompt is encoded exactly as
/v1/completions encodes it and messages are rendered exactly as /v1/chat/completions renders
them (same code: special-token text inside client strings stays plain text)."""

from __future__ import annotations

import functools
from typing import Annotated, Any

from pydantic import ConfigDict, Field, model_validator

from server.api.chat import render_chat_prompt
from server.api.errors import APIError, ParamError
from server.api.protocol import ChatMessage, OpenAIModel, Tool
from server.model.tokenizer import TokenizerInfo


class TokenizeRequest(OpenAIModel):
    """vLLM's TokenizeCompletionRequest and TokenizeChatRequest in one: `prompt` xor
    `messages`."""

    model_config = ConfigDict(extra="allow", json_schema_extra={
        "oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}]})
    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_generation_prompt: bool = True  # messages only
    tools: list[Tool] | None = None  # messages only
    # the tokenizer's automatic BOS/EOS; vLLM's defaults: on for a prompt, off for messages
    add_special_tokens: bool | None = None
    return_token_strs: bool = False
    # vLLM fields this server cannot honour: refused when set, never ignored
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    continue_final_message: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ParamError("prompt", "give exactly one of `prompt` and `messages`")
        for name in ("chat_template", "chat_template_kwargs", "continue_final_message"):
            if getattr(self, name):
                raise ParamError(name, f"`{name}` is not supported: prompts are rendered "
                                       "with the checkpoint's own chat template, as is")
        return self


class DetokenizeRequest(OpenAIModel):
    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0)]]


@functools.cache
def _automatic_specials(tok: TokenizerInfo) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(prefix, suffix) the tokenizer adds with add_special_tokens (none for LLaDA2/Ling, whose
    tokenizer_config says add_bos_token: false): found around a probe's plain ids."""
    plain = tok.hf.encode("a", add_special_tokens=False)
    full = tok.hf.encode("a", add_special_tokens=True)
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return tuple(full[:i]), tuple(full[i + len(plain):])
    return (), ()


def tokenize(tok: TokenizerInfo, req: TokenizeRequest, max_model_len: int) -> dict[str, Any]:
    if req.messages is not None:
        ids = render_chat_prompt(tok, req.messages, req.tools, req.add_generation_prompt)
        wrap = bool(req.add_special_tokens)
    else:
        assert req.prompt is not None
        ids = tok.encode(req.prompt)
        wrap = req.add_special_tokens is not False
    if wrap:
        prefix, suffix = _automatic_specials(tok)
        ids = [*prefix, *ids, *suffix]
    out: dict[str, Any] = {"count": len(ids), "max_model_len": max_model_len, "tokens": ids}
    if req.return_token_strs:
        out["token_strs"] = tok.hf.convert_ids_to_tokens(ids)
    return out


def detokenize(tok: TokenizerInfo, req: DetokenizeRequest) -> dict[str, Any]:
    """Special tokens stay visible, so detokenizing /tokenize's `messages` ids gives back the
    rendered prompt."""
    bad = next((t for t in req.tokens if t >= tok.vocab_size), None)
    if bad is not None:
        raise APIError(400, f"token id {bad} is outside the vocabulary [0, {tok.vocab_size})",
                       param="tokens")
    return {"prompt": tok.decode(req.tokens, skip_special_tokens=False)}
