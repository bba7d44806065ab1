"""OpenAI response bodies and SSE streams for completions and chat completions."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from server.api.errors import error_body
from server.api.logprobs import LogprobFormatter
from server.api.protocol import StreamOptions
from server.api.serving import Choice, Event, usage
from server.api.serving import sse as plain_sse
from server.api.tools.base import ToolCallDelta
from server.core import TokenLogprob

DONE = "data: [DONE]\n\n"


class Shape:
    """What differs between /v1/completions and /v1/chat/completions."""

    def __init__(self, chat: bool, rid: str, model: str, return_token_ids: bool,
                 logprobs: LogprobFormatter | None = None) -> None:
        self.chat, self.model, self.ids = chat, model, return_token_ids
        self.logprobs = logprobs  # set when the request asked for logprobs
        self.id = f"chatcmpl-{rid}" if chat else f"cmpl-{rid}"
        self.object = "chat.completion" if chat else "text_completion"
        self.created = int(time.time())

    def head(self, chunk: bool) -> dict[str, Any]:
        obj = self.object + (".chunk" if chunk and self.chat else "")
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def final_choice(self, c: Choice, echo: bool) -> dict[str, Any]:
        if self.chat:
            parsed = c.parsed()
            message: dict[str, Any] = {"role": "assistant", "content": parsed.content}
            if parsed.calls:
                message["tool_calls"] = [call.to_openai() for call in parsed.calls]
            out: dict[str, Any] = {"index": c.index, "message": message,
                                   "logprobs": self._logprobs(c.logprobs),
                                   "finish_reason": c.chat_finish_reason(bool(parsed.calls))}
        else:
            text = (c.prompt_text or "") + c.text if echo else c.text
            lp = self._logprobs(c.logprobs)
            if echo and self.logprobs is not None and c.prompt_logprobs is not None:
                lp = self.logprobs.completion_echo(c.prompt_ids, c.prompt_logprobs,
                                                   c.logprobs or [])
            out = {"index": c.index, "text": text, "logprobs": lp,
                   "finish_reason": c.finish_reason}
            if self.ids:
                out["prompt_token_ids"] = c.prompt_ids
        if self.ids:
            out["token_ids"] = c.token_ids
        return out

    def _logprobs(self, entries: list[TokenLogprob] | None, offset: int = 0
                  ) -> dict[str, Any] | None:
        if self.logprobs is None or entries is None:
            return None
        return self.logprobs.chat(entries) if self.chat else self.logprobs.completion(
            entries, offset)

    def delta_choice(self, c: Choice, text: str | None, token_ids: list[int] | None,
                     finish: str | None, role: bool = False,
                     logprobs: list[TokenLogprob] | None = None, offset: int = 0
                     ) -> dict[str, Any]:
        lp = self._logprobs(logprobs, offset)
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else (
                {} if text is None else {"content": text})
            out: dict[str, Any] = {"index": c.index, "delta": delta, "logprobs": lp,
                                   "finish_reason": finish}
        else:
            out = {"index": c.index, "text": text or "", "logprobs": lp,
                   "finish_reason": finish}
        if self.ids and token_ids is not None:
            out["token_ids"] = token_ids
        return out


def full_response(shape: Shape, choices: list[Choice], n: int, echo: bool = False
                  ) -> dict[str, Any]:
    body = shape.head(chunk=False)
    body["choices"] = [shape.final_choice(c, echo) for c in sorted(choices, key=lambda c:
                                                                    c.index)]
    body["usage"] = usage(choices, n)
    if shape.chat and shape.ids and choices:
        body["prompt_token_ids"] = choices[0].prompt_ids
    return body


async def stream(shape: Shape, choices: list[Choice], events: AsyncIterator[Event], n: int,
                 options: StreamOptions, echo: bool = False) -> AsyncIterator[str]:
    """Role (chat) or echo (completions) chunks first, then a chunk whenever a choice's
    committed prefix grows, one finish chunk per choice, usage if asked, then [DONE]. With
    `include_obfuscation` every chunk carries `obfuscation`: 1-32 random URL-safe characters
    (OpenAI's mitigation of payload-size side channels)."""

    def sse(body: dict[str, Any]) -> str:
        if options.include_obfuscation:
            body = body | {"obfuscation": secrets.token_urlsafe(24)[: 1 + secrets.randbelow(32)]}
        return plain_sse(body)

    for c in sorted(choices, key=lambda c: c.index):
        if shape.chat:
            yield sse(shape.head(True) | {"choices": [shape.delta_choice(c, None, None, None,
                                                                         role=True)]})
        elif echo and c.prompt_text:
            yield sse(shape.head(True) | {"choices": [shape.delta_choice(c, c.prompt_text,
                                                                         None, None)]})
    offsets: dict[int, int] = {}  # choice index -> characters of its tokens so far
    try:
        async for ev in events:
            c = ev.choice
            text = ev.text
            calls: list[ToolCallDelta] = []
            if c.tool_stream is not None:
                text, calls = c.tool_stream.feed(ev.text, final=ev.finished)
            canvas = {} if ev.canvas is None else {"canvas": ev.canvas}  # extension, opt-in
            if text or (shape.ids and ev.token_ids) or (shape.logprobs and ev.logprobs):
                yield sse(shape.head(True) | {"choices": [shape.delta_choice(
                    c, text, ev.token_ids, None, logprobs=ev.logprobs,
                    offset=offsets.get(c.index, 0)) | canvas]})
                canvas = {}
                if shape.logprobs and ev.logprobs:  # completions' text_offset goes on
                    offsets[c.index] = offsets.get(c.index, 0) + sum(
                        len(shape.logprobs.text(e.token_id)) for e in ev.logprobs)
            if calls:
                yield sse(shape.head(True) | {"choices": [{
                    "index": c.index, "delta": {"tool_calls": [d.to_openai() for d in calls]},
                    "logprobs": None, "finish_reason": None}]})
            if canvas:  # a step that grew no text: the block alone
                yield sse(shape.head(True) | {"choices": [shape.delta_choice(
                    c, None if shape.chat else "", None, None) | canvas]})
            if ev.finished:
                if c.error is not None:
                    status, kind = ((400, "BadRequestError") if c.bad_request
                                    else (500, "InternalServerError"))
                    yield plain_sse(error_body(c.error, kind, None, status))
                    yield DONE
                    return
                reason = c.finish_reason
                if c.tool_stream is not None:
                    reason = c.chat_finish_reason(c.tool_stream.num_calls > 0)
                yield sse(shape.head(True) | {"choices": [shape.delta_choice(
                    c, None if shape.chat else "", None, reason)]})
    except Exception as e:  # noqa: BLE001 - status is already 200: report in-stream
        yield plain_sse(error_body(f"{type(e).__name__}: {e}", "InternalServerError", None, 500))
        yield DONE
        return
    if options.include_usage:
        yield sse(shape.head(True) | {"choices": [], "usage": usage(choices, n)})
    yield DONE
