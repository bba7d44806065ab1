"""Chat messages (and tools) → prompt ids through the checkpoint's own template, with
special-token safety: client text is tokenized as plain text, so only the template's structure
yields special ids (a literal "<|mask|>" typed by a user stays ordinary text; cf. SGLang PR
#35998).

Client strings are swapped for placeholders before rendering and swapped back after, each piece
tokenized on its own. Placeholders use private-use characters, which survive the template's
`tojson`; a string inside a tool definition (rendered as JSON) comes back JSON-escaped.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Set as AbstractSet
from typing import Any

from server.api.errors import APIError
from server.api.protocol import ChatMessage, Tool
from server.model.tokenizer import TokenizerInfo


class _Holder:
    def __init__(self, specials: AbstractSet[str]) -> None:
        self.nonce = secrets.token_hex(8)
        self.texts: list[str] = []
        self.specials = specials

    def hold(self, text: str, as_json: bool = False) -> str:
        self.texts.append(json.dumps(text, ensure_ascii=False)[1:-1] if as_json else text)
        return f"\ue000{self.nonce}:{len(self.texts) - 1}\ue001"

    def hold_specials(self, node: Any) -> Any:
        """Tool definitions: hold (JSON-escaped) only the strings holding special-token text,
        so templates that read tool fields still see ordinary strings."""
        if isinstance(node, str):
            return self.hold(node, as_json=True) if any(t in node for t in self.specials) \
                else node
        if isinstance(node, dict):
            return {self.hold_specials(k): self.hold_specials(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self.hold_specials(v) for v in node]
        return node

    def split(self, rendered: str) -> list[tuple[bool, str]]:
        """(is_client_text, piece) in order."""
        parts = re.split(f"\ue000{self.nonce}:(\\d+)\ue001", rendered)
        return [(bool(i % 2), self.texts[int(p)] if i % 2 else p) for i, p in enumerate(parts)
                if p or i % 2]


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if not isinstance(content, list):
        return content or ""
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise APIError(400, "only text content parts are supported", param="messages")
        parts.append(part["text"])
    return "".join(parts)


def _tool_calls(h: _Holder, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for c in calls:
        fn = c.get("function") or {}
        name, args = fn.get("name"), fn.get("arguments", "{}")
        if not isinstance(name, str) or not name:
            raise APIError(400, "every assistant tool call needs function.name",
                           param="messages")
        if not isinstance(args, str):
            args = json.dumps(args, ensure_ascii=False)
        out.append({**c, "type": "function",
                    "function": {"name": h.hold(name), "arguments": h.hold(args)}})
    return out


def render_chat_prompt(tok: TokenizerInfo, messages: list[ChatMessage],
                       tools: list[Tool] | None = None, add_generation_prompt: bool = True
                       ) -> list[int]:
    """The prompt ids of a chat request (also what /tokenize reports for `messages`)."""
    h = _Holder(tok.special_tokens)
    plain: list[dict[str, Any]] = []
    for m in messages:
        d = m.model_dump(exclude_none=True)
        d["role"] = "system" if m.role == "developer" else m.role
        text = _text(m.content)
        d["content"] = h.hold(text) if text else ""
        if m.tool_calls:
            d["tool_calls"] = _tool_calls(h, m.tool_calls)
        plain.append(d)
    tool_dicts = [h.hold_specials(t.model_dump(exclude_none=True)) for t in tools or []]
    try:
        rendered = tok.apply_chat_template(plain, tools=tool_dicts or None,
                                           add_generation_prompt=add_generation_prompt)
    except Exception as e:  # noqa: BLE001 - jinja errors are the client's input
        raise APIError(400, f"cannot apply the chat template: {e}", param="messages") from None
    ids: list[int] = []
    for client, piece in h.split(rendered):
        ids.extend(tok.encode(piece) if client else tok.encode_prompt(piece))
    return ids
