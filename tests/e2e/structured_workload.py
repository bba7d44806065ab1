"""Schemas, tools and request runners shared by the structured-output tests and benchmark."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonschema
import openai

SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 10},
        "tags": {"type": "array", "items": {"enum": ["a{b", 'q"x', "é✓", "日本"]}, "maxItems": 3},
        "n": {"type": "integer", "minimum": -5, "maximum": 999},
        "inner": {"type": "object", "properties": {"ok": {"type": "boolean"}},
                  "required": ["ok"], "additionalProperties": False}},
     "required": ["name", "tags", "n", "inner"], "additionalProperties": False},
    {"type": "object", "properties": {
        "items": {"type": "array", "maxItems": 2, "items": {
            "type": "object", "properties": {
                "id": {"type": "integer", "minimum": 0, "maximum": 9},
                "label": {"const": 'brace { quote " done'}},
            "required": ["id", "label"], "additionalProperties": False}},
        "mode": {"enum": ["fast", "slow", "ünïcødé"]}},
     "required": ["items", "mode"], "additionalProperties": False},
    {"type": "object", "properties": {
        "level1": {"type": "object", "properties": {
            "level2": {"type": "object", "properties": {
                "flag": {"type": "boolean"},
                "note": {"type": ["string", "null"], "maxLength": 8}},
                "required": ["flag", "note"], "additionalProperties": False}},
            "required": ["level2"], "additionalProperties": False},
        "score": {"type": "number", "minimum": 0, "maximum": 1}},
     "required": ["level1", "score"], "additionalProperties": False},
]

TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "add", "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {
            "a": {"type": "integer", "minimum": 0, "maximum": 99},
            "b": {"type": "integer", "minimum": 0, "maximum": 99}},
            "required": ["a", "b"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "search", "description": "Search with filters.",
        "parameters": SCHEMAS[1]}},
]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


async def call(client: openai.AsyncOpenAI, stream: bool, **kw: Any
               ) -> tuple[str | None, list[dict[str, str]], str]:
    """(content, tool calls as {id, name, arguments}, finish_reason), streamed or not; a
    stream is reassembled by the OpenAI delta rules and checked against them."""
    if not stream:
        r = await client.chat.completions.create(model="tiny", **kw)
        m = r.choices[0].message
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                 for c in m.tool_calls or []]
        return m.content, calls, r.choices[0].finish_reason
    content, calls, finishes = "", {}, []
    async for chunk in await client.chat.completions.create(model="tiny", stream=True, **kw):
        if not chunk.choices:
            continue
        ch = chunk.choices[0]
        if ch.finish_reason is not None:
            finishes.append(ch.finish_reason)
        content += ch.delta.content or ""
        for d in ch.delta.tool_calls or []:
            if d.id is not None:
                assert d.index not in calls, "a call's id was sent twice"
                assert d.function.name, "the first delta of a call carries its name"
                calls[d.index] = {"id": d.id, "name": d.function.name, "arguments": ""}
            else:
                assert d.function.name is None, "a call's name was sent twice"
            calls[d.index]["arguments"] += d.function.arguments or ""
    assert len(finishes) == 1, f"finish_reason chunks: {finishes}"
    return content or None, [calls[i] for i in sorted(calls)], finishes[0]


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": f"request number {i}: fill in the form"}]


async def schema_request(client: openai.AsyncOpenAI, i: int, stream: bool) -> None:
    schema = SCHEMAS[i % len(SCHEMAS)]
    content, _, finish = await call(
        client, stream, messages=messages(i), max_tokens=400,
        response_format={"type": "json_schema",
                         "json_schema": {"name": f"s{i % 3}", "schema": schema, "strict": True}})
    assert finish == "stop", (finish, content)
    jsonschema.validate(json.loads(content or ""), schema)


async def required_tool_request(client: openai.AsyncOpenAI, i: int, stream: bool) -> None:
    _, calls, finish = await call(client, stream, messages=messages(i), tools=TOOLS,
                                  tool_choice="required", parallel_tool_calls=i % 3 == 0,
                                  max_tokens=600)
    assert finish == "tool_calls" and calls, (finish, calls)
    for c in calls:
        assert c["id"].startswith("call_")
        jsonschema.validate(json.loads(c["arguments"]), PARAMS[c["name"]])


async def gather_limited(n: int, limit: int, make: Any) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(i: int) -> None:
        async with sem:
            await make(i)

    await asyncio.gather(*(one(i) for i in range(n)))
