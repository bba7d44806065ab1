"""OpenAI request schemas (pydantic). Unknown fields are accepted, as vLLM does; OpenAI fields
the server cannot honour are refused in `params.py`. Numbers are range-checked so NaN,
infinities and negatives are 400s, never 500s; a validator's error names its field
(`ParamError`), which becomes the error's `param`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from server.api.errors import ParamError

Prob = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
MAX_N = 128  # hard ceiling; the served limit is `RequestLimits.max_n`

# JSON schemas stating what the validators below enforce (their messages are kept as they are)
_NULL = {"type": "null"}
_TEXT = {"type": "string", "minLength": 1}
_IDS = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
_STOP_SCHEMA = WithJsonSchema({"anyOf": [_TEXT, {"type": "array", "items": _TEXT}, _NULL]})
_PROMPT_SCHEMA = WithJsonSchema({"anyOf": [
    _TEXT, {"type": "array", "minItems": 1, "items": _TEXT}, _IDS,
    {"type": "array", "minItems": 1, "items": _IDS}]})
_EDITING_SCHEMA = WithJsonSchema({"anyOf": [
    {"type": "number", "minimum": 0, "maximum": 1}, {"const": "off"}, _NULL]})


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="allow")


def _has_surrogate(data: Any) -> bool:
    """Lone surrogates (legal in JSON escapes, not in UTF-8) anywhere in the parsed body."""
    stack = [data]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return False


class StreamOptions(OpenAIModel):
    include_usage: bool = False
    # random padding on every chunk (`obfuscation`), against size side channels; OpenAI's
    # default is on, ours off unless asked (docs/openai-api.md)
    include_obfuscation: bool = False
    # extension (docs/playground.md): each step's active block on the choice, as `canvas`
    include_canvas: bool = False


class SamplingFields(OpenAIModel):
    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    seed: Annotated[int, Field(ge=-(2**63), lt=2**63)] | None = None
    stop: Annotated[str | list[str] | None, _STOP_SCHEMA] = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # extensions (vLLM names where vLLM has them)
    return_token_ids: bool = False
    threshold: Prob | None = None
    # LLaDA2.1 token editing (docs/editing.md): a threshold in [0, 1] or "off"; absent: the
    # server's default. 0.0 is maximal editing, never "off".
    editing_threshold: Annotated[float | str | None, _EDITING_SCHEMA] = None
    max_post_steps: Annotated[int, Field(ge=0, le=1024)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100, allow_inf_nan=False)]] | None \
        = None  # token id (as a string, OpenAI's form) -> bias added before acceptance
    min_tokens: Annotated[int, Field(ge=0)] | None = None  # vLLM's: no EOS/stop id before it
    ignore_eos: bool = False
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None

    @model_validator(mode="before")
    @classmethod
    def _unicode(cls, data: Any) -> Any:
        if _has_surrogate(data):
            raise ValueError("the request holds text that is not valid Unicode (a lone "
                             "surrogate)")
        return data

    @model_validator(mode="after")
    def _check(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ParamError("stream_options",
                             "Stream options can only be defined when `stream=True`.")
        if isinstance(self.stop, list) and any(not s for s in self.stop) or self.stop == "":
            raise ParamError("stop", "stop strings must not be empty")
        return self

    @field_validator("editing_threshold")
    @classmethod
    def _editing(cls, v: float | str | None) -> float | str | None:
        if v is None or v == "off" or (isinstance(v, float | int) and not isinstance(v, bool)
                                       and 0 <= v <= 1):
            return v
        raise ValueError(f"editing_threshold must be a number in [0, 1] or 'off', got {v!r}")

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None and not all(k.isdigit() for k in v):
            raise ValueError("logit_bias keys must be token ids (non-negative integers)")
        if v is not None and len({int(k) for k in v}) != len(v):
            raise ValueError("logit_bias names a token id twice")
        return v

    def bias_pairs(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(k), float(b)) for k, b in (self.logit_bias or {}).items())

    def top_logprobs_wanted(self) -> int | None:
        """Top alternatives per output token, or None for no logprobs."""
        return None

    def prompt_logprobs_wanted(self) -> int | None:
        """Top alternatives per prompt token (completions `echo` + `logprobs`), or None."""
        return None

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionRequest(SamplingFields):
    prompt: Annotated[str | list[str] | list[int] | list[list[int]], _PROMPT_SCHEMA]
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None  # OpenAI's completions limit

    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs

    def prompt_logprobs_wanted(self) -> int | None:
        return self.logprobs if self.echo else None

    @model_validator(mode="after")
    def _echo(self) -> CompletionRequest:
        if self.echo and self.logprobs is not None and self.stream:
            raise ParamError("echo", "prompt log-probabilities (`echo` with `logprobs`) are "
                                     "not streamed: set `stream` to false")
        return self

    @model_validator(mode="after")
    def _prompt(self) -> CompletionRequest:
        p = self.prompt
        if p == "" or p == [] or (isinstance(p, list) and any(x in ("", []) for x in p)):
            raise ParamError("prompt", "prompt must not be empty")
        return self


class ChatMessage(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(OpenAIModel):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(OpenAIModel):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(OpenAIModel):
    name: str


class NamedToolChoice(OpenAIModel):
    type: Literal["function"]
    function: FunctionName


class JSONSchemaFormat(OpenAIModel):
    name: str = "response"
    description: str | None = None
    json_schema: dict[str, Any] | bool = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs `json_schema`")
        return self


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormat | None = None
    parallel_tool_calls: bool = True
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @model_validator(mode="after")
    def _logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ParamError("top_logprobs", "`top_logprobs` needs `logprobs` set to true")
        return self

    @model_validator(mode="after")
    def _tools(self) -> ChatCompletionRequest:
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise ParamError("tools", "tool function names must be unique")
        choice = self.tool_choice
        if choice not in (None, "none") and not names:
            raise ParamError("tool_choice",
                             "`tool_choice` is only allowed when `tools` are specified")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ParamError("tool_choice", f"tool_choice names {choice.function.name!r}, "
                                            "which is not among `tools`")
        fmt = self.response_format
        if fmt is not None and fmt.type != "text" and (
                choice == "required" or isinstance(choice, NamedToolChoice)):
            raise ParamError("response_format", "`response_format` cannot be combined with a "
                                                "required or named `tool_choice`")
        return self

    @property
    def effective_tool_choice(self) -> str | NamedToolChoice:
        """OpenAI's default: `auto` when tools are given, else `none`."""
        if self.tool_choice is None:
            return "auto" if self.tools else "none"
        return self.tool_choice
