"""What every tool-call parser provides: a one-shot parse, a streaming state, and the structural
tag that forces its format when `tool_choice` is `required` or names a function."""

from __future__ import annotations

import secrets
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text exactly as the model wrote it
    id: str = field(default_factory=new_call_id)

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ParsedOutput:
    content: str | None
    calls: list[ToolCall]


@dataclass
class ToolCallDelta:
    """One streamed piece: `id` and `name` set only in a call's first delta."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None

    def to_openai(self) -> dict[str, Any]:
        if self.name is None:
            return {"index": self.index, "function": {"arguments": self.arguments}}
        return {"index": self.index, "id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


class ToolStream:
    """Per-choice streaming state: feed text deltas, get content and tool-call deltas."""

    def feed(self, text: str, final: bool = False) -> tuple[str, list[ToolCallDelta]]:
        raise NotImplementedError

    @property
    def num_calls(self) -> int:
        raise NotImplementedError


class ToolParser:
    keep_tokens: tuple[str, ...] = ()  # special tokens that must stay visible in decoded text

    @classmethod
    def detect(cls, chat_template: str) -> bool:
        raise NotImplementedError

    def parse(self, text: str) -> ParsedOutput:
        raise NotImplementedError

    def stream(self) -> ToolStream:
        raise NotImplementedError

    def structural_tag(self, tools: list[dict[str, Any]], parallel: bool,
                       special_tokens: AbstractSet[str]) -> dict[str, Any]:
        """An xgrammar structural tag admitting one call (or several if `parallel`) of the
        given functions and nothing else."""
        raise NotImplementedError


class _FirstCallStream(ToolStream):
    def __init__(self, inner: ToolStream) -> None:
        self.inner = inner

    def feed(self, text: str, final: bool = False) -> tuple[str, list[ToolCallDelta]]:
        out, deltas = self.inner.feed(text, final)
        return out, [d for d in deltas if d.index == 0]

    @property
    def num_calls(self) -> int:
        return min(1, self.inner.num_calls)


class FirstCallOnly(ToolParser):
    """`parallel_tool_calls: false` under `tool_choice: auto`: at most one call, the first; the
    model's later calls are dropped like any text after a call. (Under `required` or a named
    tool the grammar already stops after one.)"""

    def __init__(self, inner: ToolParser) -> None:
        self.inner = inner
        self.keep_tokens = inner.keep_tokens

    def parse(self, text: str) -> ParsedOutput:
        parsed = self.inner.parse(text)
        return ParsedOutput(parsed.content, parsed.calls[:1])

    def stream(self) -> ToolStream:
        return _FirstCallStream(self.inner.stream())

    def structural_tag(self, tools: list[dict[str, Any]], parallel: bool,
                       special_tokens: AbstractSet[str]) -> dict[str, Any]:
        return self.inner.structural_tag(tools, False, special_tokens)
