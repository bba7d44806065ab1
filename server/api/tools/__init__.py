"""Tool-call parsers, one per output format, chosen once per model (`--tool-call-parser`, or
detected from the chat template)."""

from __future__ import annotations

from server.api.tools.base import ParsedOutput, ToolCall, ToolCallDelta, ToolParser
from server.api.tools.hermes import HermesToolParser

PARSERS: dict[str, type[ToolParser]] = {
    "hermes": HermesToolParser,  # <tool_call>\n{"name": …, "arguments": …}\n</tool_call>
    "llada2": HermesToolParser,
    "ling": HermesToolParser,
}


def get_tool_parser(name: str, chat_template: str | None) -> ToolParser | None:
    """`name` "auto" detects the format from the chat template; "none" disables tools."""
    if name == "none":
        return None
    if name == "auto":
        found = [cls for cls in dict.fromkeys(PARSERS.values())
                 if chat_template and cls.detect(chat_template)]
        return found[0]() if found else None
    if name not in PARSERS:
        raise ValueError(f"unknown tool-call parser {name!r}; choose auto, none, "
                         f"{', '.join(PARSERS)}")
    return PARSERS[name]()


__all__ = ["PARSERS", "ParsedOutput", "ToolCall", "ToolCallDelta", "ToolParser",
           "get_tool_parser"]
