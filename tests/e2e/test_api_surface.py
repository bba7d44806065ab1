"""The OpenAI surface without silent gaps, black-box through the official openai SDK with strict
response validation: model cards and aliases, /tokenize and /detokenize, clean validation
errors, and every SDK request field honoured, refused (live 400 naming it) or documented as
accepted and ignored in docs/openai-api.md."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import completion_create_params as completion_params
from openai.types.chat import completion_create_params as chat_params

from server.api.params import HONOURED, REFUSALS, Endpoint
from server.api.tools.base import FirstCallOnly
from server.api.tools.hermes import HermesToolParser
from tests.e2e.server_harness import API_KEY, RemoteServer

DOC = Path(__file__).resolve().parents[2] / "docs" / "openai-api.md"
ALIAS = "org/Tiny-Alias"  # a hub-style name: the slash must survive the model route
MSG = [{"role": "user", "content": "hi <|mask|> <|role_end|>"}]
SDK_TYPES = {"chat": chat_params, "completions": completion_params}
HEADINGS = {"chat": "`POST /v1/chat/completions` parameters",
            "completions": "`POST /v1/completions` parameters"}
# a value for every "ignored" row (the test fails if the docs add one without a value here)
IGNORED_SAMPLES: dict[Endpoint, dict[str, Any]] = {
    "chat": {"user": "u-1", "safety_identifier": "s-1", "metadata": {"k": "v"}, "store": True,
             "prompt_cache_key": "k", "prompt_cache_options": {"ttl": "30m"},
             "prompt_cache_retention": "24h"},
    "completions": {"user": "u-1"},
}
# OpenAI's defaults spelled out: refused fields must accept them
ACCEPTED: dict[Endpoint, dict[str, Any]] = {
    "chat": {"logprobs": False, "top_logprobs": 0, "logit_bias": {}, "presence_penalty": 0,
             "frequency_penalty": 0.0, "modalities": ["text"], "service_tier": "auto",
             "function_call": "none", "reasoning_effort": "none", "verbosity": "medium",
             "min_tokens": 0},
    "completions": {"best_of": 2, "n": 2, "suffix": "", "logit_bias": {},
                    "presence_penalty": 0, "frequency_penalty": 0, "min_tokens": 0},
}


@pytest.fixture(scope="module")
def server(tiny_llada2: Path) -> Iterator[RemoteServer]:
    t0 = int(time.time())
    srv = RemoteServer(tiny_llada2, "--served-model-name", "tiny", ALIAS, "--num-pages", "512")
    srv.started = (t0, int(time.time()))  # type: ignore[attr-defined]
    yield srv
    assert srv.stop() == 0


def strict(server: RemoteServer, root: bool = False) -> openai.OpenAI:
    """The SDK validating every response against its types; `root`: base URL without /v1."""
    return openai.OpenAI(base_url=server.url + ("" if root else "/v1"), api_key=API_KEY,
                         max_retries=0, _strict_response_validation=True)


def create(client: openai.OpenAI, endpoint: Endpoint, **kw: Any) -> Any:
    if endpoint == "chat":
        return client.chat.completions.create(**{"model": "tiny", "max_tokens": 4,
                                                 "messages": MSG, **kw})
    return client.completions.create(**{"model": "tiny", "max_tokens": 4, "prompt": "x = ", **kw})


def sdk_fields(endpoint: Endpoint) -> set[str]:
    m = SDK_TYPES[endpoint]
    return {k for td in (m.CompletionCreateParamsStreaming, m.CompletionCreateParamsNonStreaming)
            for k in td.__required_keys__ | td.__optional_keys__}


def docs_table(heading: str) -> dict[str, tuple[str, str]]:
    """`| `name` | status | notes |` rows of one section of docs/openai-api.md."""
    section = DOC.read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows |= {name: (cells[1], cells[2]) for name in re.findall(r"`(\w+)`", cells[0])}
    return rows


def test_models_list_and_retrieve_every_alias(server: RemoteServer, tiny_llada2: Path) -> None:
    client = strict(server)
    cards = client.models.list().data
    assert [c.id for c in cards] == ["tiny", ALIAS]
    lo, hi = server.started  # type: ignore[attr-defined]
    for card in cards:
        assert lo <= card.created <= hi and card.owned_by == "unmask"
        assert card.model_extra["root"] == str(tiny_llada2)
        assert client.models.retrieve(card.id) == card
    for missing in ("nope", "org/nope", "tiny/extra"):
        with pytest.raises(openai.NotFoundError) as e:
            client.models.retrieve(missing)
        assert (e.value.code, e.value.param) == ("model_not_found", "model")
        assert set(e.value.body) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_requests_may_name_any_alias(server: RemoteServer, endpoint: Endpoint) -> None:
    client = strict(server)
    assert create(client, endpoint, model=ALIAS).model == "tiny"  # the primary, as vLLM
    with pytest.raises(openai.NotFoundError) as e:
        create(client, endpoint, model="tiny2")
    assert (e.value.code, e.value.param) == ("model_not_found", "model")


def test_default_name_is_the_model_argument_as_typed(tiny_llada2: Path) -> None:
    typed = Path(tiny_llada2.parent.name) / tiny_llada2.name  # relative, with a slash
    srv = RemoteServer(typed, cwd=tiny_llada2.parent.parent, name=None)
    try:
        client = strict(srv)
        assert [c.id for c in client.models.list().data] == [str(typed)]
        assert client.models.retrieve(str(typed)).id == str(typed)
        r = client.completions.create(model=str(typed), prompt="x", max_tokens=2)
        assert r.model == str(typed)
    finally:
        assert srv.stop() == 0


class Tokenized(openai.BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class Detokenized(openai.BaseModel):
    prompt: str


def test_tokenize_matches_what_generation_feeds_the_engine(server: RemoteServer) -> None:
    client, root = strict(server), strict(server, root=True)

    def tok(**body: Any) -> Tokenized:
        return root.post("/tokenize", body={"model": ALIAS, **body}, cast_to=Tokenized)

    ids = {"return_token_ids": True}
    prompt = "def add(a, b): <|mask|>"
    c = client.completions.create(model="tiny", prompt=prompt, max_tokens=2, extra_body=ids)
    t = tok(prompt=prompt, return_token_strs=True)
    assert t.tokens == c.choices[0].model_extra["prompt_token_ids"] and t.count == len(t.tokens)
    assert t.max_model_len == client.models.retrieve("tiny").model_extra["max_model_len"]
    assert t.token_strs is not None and len(t.token_strs) == t.count
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for extra in ({}, {"tools": tools}):
        chat = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=2,
                                              extra_body=ids, **extra)
        rendered = tok(messages=MSG, **extra)
        assert rendered.tokens == chat.model_extra["prompt_token_ids"]  # same specials
    full = tok(messages=MSG).tokens
    bare = tok(messages=MSG, add_generation_prompt=False).tokens
    assert len(bare) < len(full) and full[:len(bare)] == bare
    text = root.post("/detokenize", body={"tokens": full}, cast_to=Detokenized).prompt
    assert MSG[0]["content"] in text and text != MSG[0]["content"]  # template specials kept
    assert tok(prompt=text).tokens != full  # special-token text typed by a client stays text


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/tokenize", {"prompt": "x", "messages": MSG}, "prompt"),
    ("/tokenize", {}, "prompt"),
    ("/tokenize", {"prompt": "x", "chat_template_kwargs": {"a": 1}}, "chat_template_kwargs"),
    ("/tokenize", {"messages": MSG, "chat_template": "{{ 1 }}"}, "chat_template"),
    ("/tokenize", {"messages": [{"role": "bob", "content": "x"}]}, "messages"),
    ("/detokenize", {"tokens": [1, 10**9]}, "tokens"),
    ("/detokenize", {"tokens": [-1]}, "tokens"),
])
def test_tokenize_errors(server: RemoteServer, path: str, body: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        strict(server, root=True).post(path, body=body, cast_to=Tokenized)
    assert e.value.param == param and "Value error" not in e.value.message


def test_tokenize_is_behind_the_key_and_knows_the_models(server: RemoteServer) -> None:
    for path, body in (("/tokenize", {"prompt": "x"}), ("/detokenize", {"tokens": [1]})):
        assert httpx.post(server.url + path, json=body).status_code == 401
        with pytest.raises(openai.NotFoundError):
            strict(server, root=True).post(path, body={**body, "model": "nope"},
                                           cast_to=Detokenized)


def test_echo_of_a_token_prompt_is_its_text(server: RemoteServer) -> None:
    ids = [40, 41, 42, 43]
    text = strict(server, root=True).post("/detokenize", body={"tokens": ids},
                                          cast_to=Detokenized).prompt
    client = strict(server)
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=3, echo=True)
    assert r.choices[0].text.startswith(text)
    # not strict: the SDK types a streamed completion chunk's finish_reason as never null,
    # yet OpenAI (and vLLM) send null until the last chunk
    streamed = "".join(c.choices[0].text for c in server.client().completions.create(
        model="tiny", prompt=ids, max_tokens=3, echo=True, stream=True))
    assert streamed == r.choices[0].text


@pytest.mark.parametrize(("endpoint", "kw", "param", "message"), [
    ("completions", {"stream_options": {"include_usage": True}}, "stream_options",
     "Stream options can only be defined when `stream=True`."),
    ("completions", {"prompt": ""}, "prompt", "prompt must not be empty"),
    ("completions", {"stop": [""]}, "stop", "stop strings must not be empty"),
    ("completions", {"extra_body": {"editing_threshold": 1.5}}, "editing_threshold",
     "editing_threshold must be a number in [0, 1] or 'off', got 1.5"),
    ("chat", {"tool_choice": "required"}, "tool_choice",
     "`tool_choice` is only allowed when `tools` are specified"),
    ("chat", {"messages": [{"role": "bob", "content": "x"}]}, "messages", "messages.0.role: "),
    ("chat", {"response_format": {"type": "json_schema"}}, "response_format",
     "response_format of type json_schema needs `json_schema`"),
    ("chat", {"temperature": 9}, "temperature", "temperature: "),
])
def test_validation_errors_are_clean(server: RemoteServer, endpoint: Endpoint, kw: dict,
                                     param: str, message: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        create(strict(server), endpoint, **kw)
    assert e.value.param == param
    text = e.value.body["message"]  # type: ignore[index]
    assert text.startswith(message) and "Value error" not in text


def test_invalid_json_has_no_param(server: RemoteServer) -> None:
    r = httpx.post(server.url + "/v1/completions", content=b"{nope", headers={
        "Authorization": f"Bearer {API_KEY}", "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] is None
    assert r.json()["error"]["message"].startswith("invalid JSON")


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_every_sdk_field_is_classified(endpoint: Endpoint) -> None:
    """Fails when the SDK grows a field nobody classified, or docs and code disagree."""
    fields, table = sdk_fields(endpoint), docs_table(HEADINGS[endpoint])
    assert not fields - table.keys(), f"classify in docs/openai-api.md: {fields - table.keys()}"
    assert not table.keys() - fields, f"not SDK fields: {table.keys() - fields}"
    for name in fields:
        refused = name in REFUSALS and endpoint in REFUSALS[name].endpoints
        want = "honoured" if name in HONOURED[endpoint] else "refused" if refused else "ignored"
        assert table[name][0] == want, (name, table[name], want)
        assert not (name in HONOURED[endpoint] and refused), name
    ignored = {n for n, (status, notes) in table.items() if status == "ignored" and notes}
    assert ignored == {n for n, (status, _) in table.items() if status == "ignored"}
    assert ignored == IGNORED_SAMPLES[endpoint].keys()
    extensions = docs_table("Extensions (both endpoints)")
    for name, row in REFUSALS.items():  # refusals outside the SDK: documented as extensions
        if endpoint in row.endpoints and name not in fields:
            assert extensions[name][0] == "refused", name


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_refused_fields_are_refused_by_the_server(server: RemoteServer,
                                                  endpoint: Endpoint) -> None:
    client = strict(server)
    rows = {n: r for n, r in REFUSALS.items() if endpoint in r.endpoints}
    for name, row in rows.items():
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as e:
                create(client, endpoint, stream=stream, extra_body={name: row.example})
            assert (e.value.param, e.value.code) == (name, "unsupported_parameter")
            assert name in e.value.message
    create(client, endpoint, extra_body=dict.fromkeys(rows))  # null: the default
    accepted = {k: v for k, v in ACCEPTED[endpoint].items() if k in rows or k == "n"}
    create(client, endpoint, extra_body=accepted)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_ignored_fields_change_nothing(server: RemoteServer, endpoint: Endpoint) -> None:
    client = strict(server)
    plain = create(client, endpoint, max_tokens=12)
    with_them = create(client, endpoint, max_tokens=12, **IGNORED_SAMPLES[endpoint])
    assert with_them.choices == plain.choices and with_them.usage == plain.usage


def test_parallel_tool_calls_false_keeps_the_first_call(server: RemoteServer) -> None:
    two = ('<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>\n'
           '<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>')
    parser = FirstCallOnly(HermesToolParser())
    assert [c.name for c in HermesToolParser().parse(two).calls] == ["f", "g"]
    assert [c.name for c in parser.parse(two).calls] == ["f"]
    stream = parser.stream()
    deltas = [d for i in range(0, len(two), 7) for d in stream.feed(two[i:i + 7])[1]]
    deltas += stream.feed("", final=True)[1]
    assert {d.index for d in deltas} == {0} and stream.num_calls == 1
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    r = strict(server).chat.completions.create(model="tiny", messages=MSG, tools=tools,
                                               parallel_tool_calls=False, max_tokens=40)
    assert len(r.choices[0].message.tool_calls or []) <= 1
