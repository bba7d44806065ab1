"""The served model names: the primary one (reported in every response) and its aliases, their
OpenAI model cards (`GET /v1/models`, `GET /v1/models/{model}`), and the 404 for any other."""

from __future__ import annotations

import time
from typing import Any

from server.api.errors import APIError


class ServedModels:
    def __init__(self, names: tuple[str, ...], root: str) -> None:
        if not names:
            raise ValueError("at least one served model name is needed")
        self.names = tuple(dict.fromkeys(names))  # primary first, duplicates dropped
        self.root = root  # the model path or hub id served (vLLM's `root`)
        self.created = int(time.time())  # the server's start: every card carries it

    @property
    def primary(self) -> str:
        return self.names[0]

    def check(self, name: str | None) -> None:
        """A request may name any alias, or no model at all (as vLLM allows)."""
        if name is not None and name not in self.names:
            raise APIError(404, f"The model `{name}` does not exist. Valid models: "
                                f"{', '.join(self.names)}", "NotFoundError", "model",
                           "model_not_found")

    def card(self, name: str, info: Any) -> dict[str, Any]:
        """`info`: the engine's `EngineInfo` once it is up (None before). Extensions beside
        OpenAI's fields: `max_model_len` (vLLM's), and `decoding` — how the model writes:
        "block-diffusion" (with its block size, whether requests that do not choose edit, and
        whether LLaDA2.2 edit tokens apply) or "autoregressive"."""
        self.check(name)
        card: dict[str, Any] = {"id": name, "object": "model", "created": self.created,
                                "owned_by": "unmask", "root": self.root, "parent": None}
        if info is not None:
            card["max_model_len"] = info.max_model_len
            card["decoding"] = ({"kind": "block-diffusion", "block_size": info.block_size,
                                 "editing_default": info.editing_default,
                                 "levenshtein_edits": info.levenshtein}
                                if info.mode == "diffusion" else {"kind": "autoregressive"})
        return card

    def cards(self, info: Any) -> dict[str, Any]:
        return {"object": "list", "data": [self.card(n, info) for n in self.names]}
