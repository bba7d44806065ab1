"""Tool calling and structured output through a real server and the official openai SDK, on
random weights (the worst case: only the grammar makes the output valid)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pydantic
import pytest

from tests.e2e.server_harness import RemoteServer
from tests.e2e.structured_workload import (
    SCHEMAS,
    TOOLS,
    call,
    gather_limited,
    messages,
    required_tool_request,
    schema_request,
)


@pytest.fixture(scope="module")
def server(tiny_llada2: Path) -> Iterator[RemoteServer]:
    srv = RemoteServer(tiny_llada2, "--num-pages", "2048", "--max-running-requests", "32")
    yield srv
    assert srv.stop() == 0


def tpf(server: RemoteServer) -> tuple[float, float]:
    """(sum, count) of the per-step tokens-per-forward histogram; (0, 0) before any step."""
    try:
        return (server.metric("unmask:tokens_per_forward_sum"),
                server.metric("unmask:tokens_per_forward_count"))
    except KeyError:
        return 0.0, 0.0


def test_200_schema_and_200_required_tool_requests_are_valid(server: RemoteServer) -> None:
    async def workload(request) -> None:  # noqa: ANN001 - one of the structured requests
        client = server.async_client(timeout=300)
        await gather_limited(200, 32, lambda i: request(client, i, i % 2 == 0))

    s0, n0 = tpf(server)
    asyncio.run(workload(schema_request))
    s1, n1 = tpf(server)
    asyncio.run(workload(required_tool_request))
    s2, n2 = tpf(server)
    schema_tpf, tool_tpf = (s1 - s0) / (n1 - n0), (s2 - s1) / (n2 - n1)
    print(f"mean tokens per forward: json_schema {schema_tpf:.2f}, tools {tool_tpf:.2f}")
    assert schema_tpf > 1 and tool_tpf > 1  # forced tokens commit together even on noise
    assert server.metric("unmask:num_requests_running") == 0


def test_streamed_tool_calls_follow_the_delta_rules(server: RemoteServer) -> None:
    async def both(**kw: object) -> tuple:
        client = server.async_client()
        plain = await call(client, False, messages=messages(7), tools=TOOLS, **kw)
        streamed = await call(client, True, messages=messages(7), tools=TOOLS, **kw)
        assert streamed[2] == plain[2] and streamed[0] == plain[0]
        assert [(c["name"], c["arguments"]) for c in streamed[1]] == \
            [(c["name"], c["arguments"]) for c in plain[1]]
        return plain

    content, calls, finish = asyncio.run(both(tool_choice="required", max_tokens=400))
    assert finish == "tool_calls" and content is None and calls
    _, calls, finish = asyncio.run(both(
        tool_choice={"type": "function", "function": {"name": "add"}}, max_tokens=400))
    assert finish == "stop"  # a forced named tool finishes with "stop", as OpenAI does
    assert [c["name"] for c in calls] == ["add"]
    _, calls, finish = asyncio.run(both(tool_choice="required", max_tokens=8))
    assert finish == "length"
    content, calls, finish = asyncio.run(both(tool_choice="auto", max_tokens=40))
    assert finish in ("stop", "length", "tool_calls")


def test_parse_with_a_pydantic_model(server: RemoteServer) -> None:
    class Inner(pydantic.BaseModel):
        ok: bool

    class Form(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=10)
        count: int = pydantic.Field(ge=0, le=50)
        inner: Inner

    r = server.client().chat.completions.parse(model="tiny", messages=messages(1),
                                               response_format=Form, max_tokens=300)
    form = r.choices[0].message.parsed
    assert isinstance(form, Form) and 0 <= form.count <= 50


def test_json_object_and_multi_turn_tool_conversation(server: RemoteServer) -> None:
    client = server.client()
    r = client.chat.completions.create(model="tiny", messages=messages(2), max_tokens=40,
                                       response_format={"type": "json_object"})
    text = r.choices[0].message.content or ""
    assert text.startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    first = client.chat.completions.create(model="tiny", messages=messages(3), tools=TOOLS,
                                           tool_choice="required", max_tokens=400)
    msg = first.choices[0].message
    history = [*messages(3), msg.model_dump(exclude_none=True)]
    history += [{"role": "tool", "tool_call_id": c.id, "content": '{"temp": 21}'}
                for c in msg.tool_calls or []]
    again = client.chat.completions.create(model="tiny", messages=history, tools=TOOLS,
                                           max_tokens=20)
    assert again.usage.prompt_tokens > first.usage.prompt_tokens


def test_bad_tool_requests_are_400(server: RemoteServer) -> None:
    client = server.client()
    base = {"model": "tiny", "messages": messages(0), "max_tokens": 5}
    with pytest.raises(openai.BadRequestError, match="only allowed when `tools`"):
        client.chat.completions.create(**base, tool_choice="required")
    with pytest.raises(openai.BadRequestError, match="not among `tools`"):
        client.chat.completions.create(**base, tools=TOOLS, tool_choice={
            "type": "function", "function": {"name": "nope"}})
    with pytest.raises(openai.BadRequestError, match="unsupported JSON schema"):
        client.chat.completions.create(**base, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}})
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(**base, tools=[{"type": "function", "function": {
            "name": "has space"}}])
    r = httpx.post(server.url + "/v1/chat/completions", headers={
        "Authorization": f"Bearer {server.api_key}"}, json={**base, "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMAS[0]}},
            "tool_choice": "required", "tools": TOOLS})
    assert r.status_code == 400 and "cannot be combined" in r.json()["error"]["message"]
    assert server.metric("unmask:num_requests_waiting") == 0
