"""Every OpenAI request parameter is honoured or refused, never silently ignored.

`HONOURED` lists the fields the server acts on; `REFUSALS` the fields it answers with a 400
naming the param (`code: unsupported_parameter`) whenever they hold anything but a value the
server does honour. Fields accepted and ignored, each with its reason, are listed in
docs/openai-api.md; tests/e2e/test_api_surface.py fails when the openai SDK's request types grow
a field that none of the three classifies. Unknown non-OpenAI fields stay accepted (as vLLM).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from server.api.errors import APIError
from server.api.protocol import ChatCompletionRequest, SamplingFields

Endpoint = Literal["chat", "completions"]
CHAT: frozenset[Endpoint] = frozenset({"chat"})
COMPLETIONS: frozenset[Endpoint] = frozenset({"completions"})
BOTH: frozenset[Endpoint] = CHAT | COMPLETIONS

HONOURED: dict[Endpoint, frozenset[str]] = {
    "chat": frozenset({
        "messages", "model", "max_completion_tokens", "max_tokens", "n", "seed", "stop",
        "stream", "stream_options", "temperature", "top_p", "tools", "tool_choice",
        "response_format", "parallel_tool_calls", "logprobs", "top_logprobs", "logit_bias"}),
    "completions": frozenset({
        "prompt", "model", "max_tokens", "n", "seed", "stop", "stream", "stream_options",
        "temperature", "top_p", "echo", "logprobs", "logit_bias"}),
}


@dataclass(frozen=True)
class Refusal:
    endpoints: frozenset[Endpoint]
    accepts: Callable[[Any, SamplingFields], bool]  # (value, None if absent; request) → fine
    example: Any  # a value that is refused (the surface test sends it)
    reason: str


def _only(*values: Any) -> Callable[[Any, SamplingFields], bool]:
    """Absent, null or one of `values` (==, so 0 and 0.0 are alike; a bool only matches a
    bool, so a completions `logprobs: 0` is not taken for `false`)."""
    return lambda v, _req: v is None or any(
        v == d and isinstance(v, bool) == isinstance(d, bool) for d in values)


_PENALTY = ("penalties over the output so far are not defined for block diffusion, which "
            "commits out of order; not implemented for AR checkpoints either")

# -- PENDING: sampling the engine does not do yet. Implementing one: delete its row, add the
#    name to HONOURED and turn its row in docs/openai-api.md into "honoured".
_PENDING: dict[str, Refusal] = {
    "presence_penalty": Refusal(BOTH, _only(0), 0.5, _PENALTY),
    "frequency_penalty": Refusal(BOTH, _only(0), 0.5, _PENALTY),
}

# -- UNSUPPORTED: features this server does not have.
_UNSUPPORTED: dict[str, Refusal] = {
    "best_of": Refusal(COMPLETIONS, lambda v, req: v is None or v == 1 or v == req.n, 3,
                       "no server-side best-of ranking: ask for `n` choices instead"),
    "suffix": Refusal(COMPLETIONS, _only(""), "}", "no insertion (fill-in-the-middle) mode"),
    "audio": Refusal(CHAT, _only(), {"voice": "alloy", "format": "wav"}, "text only"),
    "modalities": Refusal(CHAT, _only(["text"]), ["text", "audio"], "text output only"),
    "prediction": Refusal(CHAT, _only(), {"type": "content", "content": "x"},
                          "no predicted outputs"),
    "service_tier": Refusal(CHAT, _only("auto", "default"), "priority",
                            "one service tier: `auto` and `default` are accepted"),
    "web_search_options": Refusal(CHAT, _only(), {}, "no web search"),
    "functions": Refusal(CHAT, _only(), [{"name": "f"}], "deprecated: use `tools`"),
    "function_call": Refusal(CHAT, _only("none"), "auto", "deprecated: use `tool_choice`"),
    "moderation": Refusal(CHAT, _only(), {"model": "omni-moderation-latest"},
                          "no moderation model"),
    "reasoning_effort": Refusal(CHAT, _only("none"), "high",
                                "the model is served without reasoning (its chat template "
                                "renders `detailed thinking off`): only `none` is accepted"),
    "verbosity": Refusal(CHAT, _only("medium"), "low",
                         "no verbosity control: only `medium` (the default) is accepted"),
}

REFUSALS: dict[str, Refusal] = _PENDING | _UNSUPPORTED


def check_params(req: SamplingFields) -> None:
    """400 for the first refused field holding a value the server would not honour."""
    endpoint: Endpoint = "chat" if isinstance(req, ChatCompletionRequest) else "completions"
    for name, row in REFUSALS.items():
        if endpoint in row.endpoints and not row.accepts(getattr(req, name, None), req):
            raise APIError(400, f"Unsupported parameter: `{name}` ({row.reason}).",
                           param=name, code="unsupported_parameter")
