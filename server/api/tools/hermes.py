"""The LLaDA2 / Ling-2.0 / Hermes format (llada2-spec §6.5):

    optional content, then "\n" and calls separated by "\n", each
    <tool_call>\n{"name": "NAME", "arguments": {...}}\n</tool_call>

One scanner serves both paths. Content is the text before the first `<tool_call>` (minus the
"\n" that joins them); text between or after calls is not content. Arguments are the raw JSON
text the model wrote, so streamed fragments concatenate to exactly the non-streamed string.
Non-streamed output with any malformed or unterminated call falls back to plain content.
"""

from __future__ import annotations

import json
import re
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from server.api.tools.base import (
    ParsedOutput,
    ToolCall,
    ToolCallDelta,
    ToolParser,
    ToolStream,
    new_call_id,
)

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
_HOLD = ("\n" + OPEN, OPEN)  # a text tail that may grow into one of these is held back


@dataclass
class _Call:
    name: str | None  # known once the header up to "arguments": is complete
    args: str  # argument text seen so far (a prefix of the final one)
    ok: bool  # closed and well-formed: {"name": str, "arguments": {...}} and nothing else


def _held(text: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a held pattern."""
    for n in range(min(len(text), max(map(len, _HOLD)) - 1), 0, -1):
        if any(p.startswith(text[-n:]) and n < len(p) for p in _HOLD):
            return n
    return 0


def _value_end(s: str) -> int | None:
    """For an object/array at the start of `s`: the index just past it, or None if open."""
    depth, in_str, esc = 0, False, False
    for i, ch in enumerate(s):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _scan_call(body: str, closed: bool) -> _Call:
    m = _HEAD.match(body)
    if m is None:
        return _Call(None, "", False)
    try:
        name = json.loads(f'"{m.group(1)}"')
    except json.JSONDecodeError:
        return _Call(None, "", False)
    rest = body[m.end():]
    if not rest.startswith("{"):  # arguments must be an object
        return _Call(name, "", False)
    end = _value_end(rest)
    if end is None:
        return _Call(name, rest, False)
    args, ok = rest[:end], closed and rest[end:].strip() == "}"
    if ok:
        try:
            ok = isinstance(json.loads(args), dict)
        except json.JSONDecodeError:
            ok = False
    return _Call(name, args, ok)


def _scan(text: str, final: bool) -> tuple[str, list[_Call] | None]:
    """(content releasable so far, the calls seen; None if no call has started)."""
    i = text.find(OPEN)
    if i < 0:
        return text[: len(text) - (0 if final else _held(text))], None
    content = text[:i].removesuffix("\n")
    calls = []
    while i >= 0:
        start = i + len(OPEN)
        j = text.find(CLOSE, start)
        calls.append(_scan_call(text[start:] if j < 0 else text[start:j], closed=j >= 0))
        i = -1 if j < 0 else text.find(OPEN, j + len(CLOSE))
    return content, calls


class _HermesStream(ToolStream):
    def __init__(self) -> None:
        self.text = ""
        self.content_sent = 0  # chars of content released (always a prefix of `text`)
        self.sent: list[tuple[str, int]] = []  # per emitted call: id, argument chars sent

    @property
    def num_calls(self) -> int:
        return len(self.sent)

    def feed(self, text: str, final: bool = False) -> tuple[str, list[ToolCallDelta]]:
        self.text += text
        content, calls = _scan(self.text, final)
        out = content[self.content_sent:]
        self.content_sent = max(self.content_sent, len(content))
        deltas: list[ToolCallDelta] = []
        for idx, call in enumerate(calls or []):
            if call.name is None:
                break  # header not complete (or malformed): later calls wait behind it
            if idx == len(self.sent):
                self.sent.append((new_call_id(), len(call.args)))
                deltas.append(ToolCallDelta(idx, call.args, self.sent[idx][0], call.name))
            elif len(call.args) > self.sent[idx][1]:
                deltas.append(ToolCallDelta(idx, call.args[self.sent[idx][1]:]))
                self.sent[idx] = (self.sent[idx][0], len(call.args))
        if final and calls is not None and not self.sent:  # nothing parsed: all of it is text
            out += self.text[self.content_sent:]
            self.content_sent = len(self.text)
        return out, deltas


class HermesToolParser(ToolParser):
    keep_tokens = (OPEN, CLOSE)

    @classmethod
    def detect(cls, chat_template: str) -> bool:
        return OPEN in chat_template

    def parse(self, text: str) -> ParsedOutput:
        content, calls = _scan(text, final=True)
        if not calls or not all(c.ok for c in calls):
            return ParsedOutput(text, [])
        return ParsedOutput(content or None, [ToolCall(c.name or "", c.args) for c in calls])

    def stream(self) -> ToolStream:
        return _HermesStream()

    def structural_tag(self, tools: list[dict[str, Any]], parallel: bool,
                       special_tokens: AbstractSet[str]) -> dict[str, Any]:
        begin: Any = {"type": "token", "token": OPEN} if OPEN in special_tokens else OPEN
        close_token = CLOSE in special_tokens
        tags = []
        for tool in tools:
            fn = tool["function"]
            params = fn.get("parameters") or {"type": "object"}
            elements: list[dict[str, Any]] = [
                {"type": "const_string",
                 "value": '\n{"name": ' + json.dumps(fn["name"]) + ', "arguments": '},
                {"type": "json_schema", "json_schema": params},
            ]
            if close_token:
                elements.append({"type": "const_string", "value": "}\n"})
            tags.append({"type": "tag", "begin": begin,
                         "content": {"type": "sequence", "elements": elements},
                         "end": {"type": "token", "token": CLOSE} if close_token
                         else "}\n" + CLOSE})
        return {"type": "structural_tag",
                "format": {"type": "tags_with_separator", "tags": tags, "separator": "\n",
                           "at_least_one": True, "stop_after_first": not parallel}}
