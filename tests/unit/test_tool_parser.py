"""The LLaDA2/Hermes tool-call parser on hand-written outputs, one-shot and streamed at every
possible chunk boundary."""

from __future__ import annotations

import json

import pytest

from server.api.tools import get_tool_parser
from server.api.tools.hermes import HermesToolParser

P = HermesToolParser()
CALL_A = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "u": "c"}}'
          '\n</tool_call>')
CALL_B = ('<tool_call>\n{"name": "add", "arguments": {"a": 1, "nested": {"s": "}{\\"]["}}}'
          '\n</tool_call>')


def stream(text: str, cuts: list[int]) -> tuple[str, dict[int, dict]]:
    """Feed `text` split at `cuts`; reassemble content and calls by the OpenAI delta rules."""
    s = P.stream()
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    content, calls = "", {}
    for i, piece in enumerate(pieces):
        out, deltas = s.feed(piece, final=i == len(pieces) - 1)
        content += out
        for d in deltas:
            if d.name is not None:
                assert d.index not in calls, "id/name sent twice"
                calls[d.index] = {"id": d.id, "name": d.name, "arguments": ""}
            calls[d.index]["arguments"] += d.arguments
    return content, calls


def check_every_split(text: str) -> None:
    whole = P.parse(text)
    for k in range(len(text) + 1):
        content, calls = stream(text, [k])
        assert content == (whole.content or "") if whole.calls else content == text
        assert [(c["name"], c["arguments"]) for c in calls.values()] == \
            [(c.name, c.arguments) for c in whole.calls]
    content, calls = stream(text, list(range(1, len(text))))  # one character at a time
    assert len(calls) == len(whole.calls)


def test_no_call() -> None:
    out = P.parse("just text, with <tool and a < sign")
    assert out.content == "just text, with <tool and a < sign" and out.calls == []
    check_every_split("just text, with <tool and a < sign\n")


def test_one_call() -> None:
    out = P.parse(CALL_A)
    assert out.content is None
    assert [(c.name, json.loads(c.arguments)) for c in out.calls] == [
        ("get_weather", {"city": "Paris", "u": "c"})]
    assert out.calls[0].id.startswith("call_")
    check_every_split(CALL_A)


def test_several_calls_with_text_before() -> None:
    text = "Let me check.\n" + CALL_A + "\n" + CALL_B
    out = P.parse(text)
    assert out.content == "Let me check."
    assert [c.name for c in out.calls] == ["get_weather", "add"]
    assert json.loads(out.calls[1].arguments) == {"a": 1, "nested": {"s": '}{"]['}}
    check_every_split(text)


def test_truncated_call_falls_back_to_content() -> None:
    text = CALL_A + "\n" + CALL_B[:40]
    out = P.parse(text)
    assert out.content == text and out.calls == []
    content, calls = stream(text, [10, 60])  # streaming has sent what it could: no error
    assert calls[0]["name"] == "get_weather"


@pytest.mark.parametrize("text", [
    "<tool_call>\nnot json\n</tool_call>",
    '<tool_call>\n{"name": "f", "arguments": [1, 2]}\n</tool_call>',
    '<tool_call>\n{"name": "f", "arguments": {"a": 1}, "extra": 2}\n</tool_call>',
    '<tool_call>\n{"arguments": {}, "name": "f"}\n</tool_call>',
    '<tool_call>\n{"name": "f", "arguments": {"a": tru}}\n</tool_call>',
])
def test_malformed_call_is_content(text: str) -> None:
    out = P.parse("hi\n" + text)
    assert out.content == "hi\n" + text and out.calls == []


def test_malformed_header_streams_as_content() -> None:
    text = "hi\n<tool_call>\nnot json\n</tool_call>"
    for k in range(len(text) + 1):
        assert stream(text, [k]) == (text, {})


def test_registry_detects_from_template() -> None:
    assert isinstance(get_tool_parser("auto", "... <tool_call> ..."), HermesToolParser)
    assert get_tool_parser("auto", "{{ messages }}") is None
    assert get_tool_parser("none", "<tool_call>") is None
    with pytest.raises(ValueError, match="unknown tool-call parser"):
        get_tool_parser("nope", None)
