"""Chat messages → prompt ids through the checkpoint's own template, with special-token safety:
message text is tokenized as plain text, so only the template's structure yields special ids
(a literal "<|mask|>" typed by a user stays ordinary text; cf. SGLang PR #35998)."""

from __future__ import annotations

import re
import secrets
from typing import Any

from server.api.errors import APIError
from server.api.protocol import ChatMessage
from server.model.tokenizer import TokenizerInfo


def render_chat_prompt(tok: TokenizerInfo, messages: list[ChatMessage]) -> list[int]:
    nonce = secrets.token_hex(8)
    texts: list[str] = []

    def hold(text: str) -> str:
        texts.append(text)
        return f"\x00{nonce}:{len(texts) - 1}\x00"

    plain: list[dict[str, Any]] = []
    for m in messages:
        d = m.model_dump(exclude_none=True)
        d["role"] = "system" if m.role == "developer" else m.role
        content = m.content
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise APIError(400, "only text content parts are supported",
                                   param="messages")
                parts.append(part["text"])
            content = "".join(parts)
        d["content"] = hold(content) if content else ""
        plain.append(d)
    try:
        rendered = tok.apply_chat_template(plain)
    except Exception as e:  # noqa: BLE001 - jinja errors are the client's input
        raise APIError(400, f"cannot apply the chat template: {e}", param="messages") from None
    ids: list[int] = []
    for i, piece in enumerate(re.split(f"\x00{nonce}:(\\d+)\x00", rendered)):
        if i % 2:
            ids.extend(tok.encode(texts[int(piece)]))
        elif piece:
            ids.extend(tok.encode_prompt(piece))
    return ids
