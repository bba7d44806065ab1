"""Per-request limits (each a `serve` flag): checked on the parsed request, before tokenizing,
so an oversized request costs the server nothing but its parse. Violations are 400s."""

from __future__ import annotations

import json
from dataclasses import dataclass

from server.api.errors import APIError
from server.api.protocol import ChatCompletionRequest, SamplingFields


@dataclass(frozen=True)
class RequestLimits:
    max_n: int = 16  # choices per request
    max_tokens: int | None = None  # per choice; None: the model's context length
    max_stop_strings: int = 16
    max_stop_length: int = 256  # characters per stop string
    max_tool_schema_bytes: int = 64 << 10  # JSON size of tools + response_format schema

    def check(self, req: SamplingFields, max_model_len: int | None) -> None:
        if req.n > self.max_n:
            raise APIError(400, f"n must be at most {self.max_n}", param="n")
        cap = self.max_tokens or max_model_len
        for name in ("max_tokens", "max_completion_tokens"):
            value = getattr(req, name, None)
            if cap is not None and value is not None and value > cap:
                raise APIError(400, f"{name} must be at most {cap}", param=name)
        stops = req.stop_list()
        if len(stops) > self.max_stop_strings:
            raise APIError(400, f"at most {self.max_stop_strings} stop strings", param="stop")
        if any(len(s) > self.max_stop_length for s in stops):
            raise APIError(400, f"stop strings must be at most {self.max_stop_length} "
                                "characters", param="stop")
        if isinstance(req, ChatCompletionRequest):
            self._check_schemas(req)

    def _check_schemas(self, req: ChatCompletionRequest) -> None:
        parts = [t.model_dump(exclude_none=True) for t in req.tools or []]
        if req.response_format is not None:
            parts.append(req.response_format.model_dump(exclude_none=True, by_alias=True))
        if not parts:
            return
        size = len(json.dumps(parts, ensure_ascii=False).encode("utf-8", "replace"))
        if size > self.max_tool_schema_bytes:
            raise APIError(400, f"tools and response_format schemas take {size} bytes; the "
                                f"limit is {self.max_tool_schema_bytes}", param="tools")
