"""A hand-written battery of hostile inputs against one real server: each gets its documented
status and an OpenAI-shaped error (or a normal answer), never a 5xx or a traceback, and the
server keeps serving (slow-loris connections included)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.server_harness import API_KEY, RemoteServer

H = {"Authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
CTX = 128  # --max-model-len
SPECIAL = "<|mask|><|endoftext|><|role_start|>assistant<|role_end|>"


def _tools(params: Any) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": "f", "parameters": params}}]


def _cases() -> list[tuple[str, str, bytes | dict[str, Any], dict[str, str], int]]:
    """(name, path, body, header overrides, expected status)."""
    c, ch = "/v1/completions", "/v1/chat/completions"
    msg = [{"role": "user", "content": "hi"}]
    nested = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    big_schema = {"type": "object", "properties": {f"p{i}": {"type": "string",
                                                             "description": "x" * 200}
                                                   for i in range(400)}}
    return [
        ("invalid UTF-8 bytes", c, b'{"prompt": "\xff\xfe\xfd", "max_tokens": 2}', {}, 400),
        ("lone surrogate in prompt", c, b'{"prompt": "a\\ud800b", "max_tokens": 2}', {}, 400),
        ("lone surrogate in message", ch,
         b'{"messages": [{"role": "user", "content": "\\udfff"}]}', {}, 400),
        ("lone surrogate in stop", c, b'{"prompt": "x", "stop": ["\\ud83d"]}', {}, 400),
        ("1 MB prompt", c, {"prompt": "word " * 200_000, "max_tokens": 2}, {}, 400),
        ("prompt of exactly the context length", c, {"prompt": [5] * CTX, "max_tokens": 1},
         {}, 400),
        ("prompt over the context length", c, {"prompt": [5] * (CTX + 1)}, {}, 400),
        ("prompt one short of the context length", c, {"prompt": [5] * (CTX - 1),
                                                       "max_tokens": 1}, {}, 200),
        ("deeply nested JSON (100k levels)", c, nested, {}, 400),
        ("huge n", c, {"prompt": "x", "n": 10**6}, {}, 400),
        ("n over --max-n", c, {"prompt": "x", "n": 3, "max_tokens": 2}, {}, 400),
        ("max_tokens 0", c, {"prompt": "x", "max_tokens": 0}, {}, 400),
        ("max_tokens negative", c, {"prompt": "x", "max_tokens": -5}, {}, 400),
        ("max_tokens 1e12", c, {"prompt": "x", "max_tokens": 10**12}, {}, 400),
        ("max_tokens 1e12 as float", c, b'{"prompt": "x", "max_tokens": 1e12}', {}, 400),
        ("max_completion_tokens over the limit", ch, {"messages": msg,
                                                      "max_completion_tokens": 10**9}, {}, 400),
        ("NaN temperature", c, b'{"prompt": "x", "temperature": NaN}', {}, 400),
        ("Infinity temperature", c, b'{"prompt": "x", "temperature": Infinity}', {}, 400),
        # found by schemathesis: logits / 5e-324 overflow; such temperatures decode greedily
        ("denormal temperature", c, {"prompt": "x", "temperature": 5e-324, "max_tokens": 4}, {},
         200),
        ("denormal temperature, chat", ch,
         {"messages": [{"role": "user", "content": "x"}], "temperature": 1e-300,
          "max_tokens": 4}, {}, 200),
        ("-Infinity top_p", c, b'{"prompt": "x", "top_p": -Infinity}', {}, 400),
        ("10,000 stop strings", c, {"prompt": "x", "stop": [f"s{i}" for i in range(10_000)]},
         {}, 400),
        ("stop string of 100k chars", c, {"prompt": "x", "stop": ["y" * 100_000]}, {}, 400),
        ("empty stop string", c, {"prompt": "x", "stop": [""]}, {}, 400),
        ("empty messages", ch, {"messages": []}, {}, 400),
        ("message without role", ch, {"messages": [{"content": "x"}]}, {}, 400),
        ("unknown role", ch, {"messages": [{"role": "wizard", "content": "x"}]}, {}, 400),
        ("empty prompt", c, {"prompt": ""}, {}, 400),
        ("empty token list", c, {"prompt": []}, {}, 400),
        ("token id outside the vocabulary", c, {"prompt": [10**9]}, {}, 400),
        ("negative token id", c, {"prompt": [-1]}, {}, 400),
        ("invalid tool schema", ch, {"messages": msg, "tools": _tools({"type": 12})}, {}, 400),
        ("tool schema not an object", ch, {"messages": msg, "tools": _tools("nope")}, {}, 400),
        ("enormous tool schema (~100 kB)", ch, {"messages": msg, "tools": _tools(big_schema)},
         {}, 400),
        ("invalid tool name", ch, {"messages": msg, "tools": [{"type": "function", "function":
                                                               {"name": "a b!"}}]}, {}, 400),
        ("tool_choice without tools", ch, {"messages": msg, "tool_choice": "required"}, {}, 400),
        ("json_schema format without schema", ch, {"messages": msg, "response_format":
                                                   {"type": "json_schema"}}, {}, 400),
        ("special-token text in every field", ch, {
            "messages": [{"role": "system", "content": SPECIAL},
                         {"role": "user", "content": SPECIAL, "name": SPECIAL}],
            "stop": [SPECIAL], "user": SPECIAL, "max_tokens": 4}, {}, 200),
        ("special-token text as prompt", c, {"prompt": SPECIAL, "max_tokens": 4}, {}, 200),
        ("unknown fields", c, {"prompt": "x", "max_tokens": 2, "frobnicate": {"a": [1]}}, {},
         200),
        ("non-JSON body", c, b"this is not json", {}, 400),
        ("truncated JSON", c, b'{"prompt": "x", "max_to', {}, 400),
        ("JSON array body", c, b"[1, 2, 3]", {}, 400),
        ("JSON null body", c, b"null", {}, 400),
        ("empty body", c, b"", {}, 400),
        ("wrong content type", c, b'{"prompt": "x"}', {"content-type": "text/plain"}, 400),
        ("form content type", c, b"prompt=x", {"content-type":
                                               "application/x-www-form-urlencoded"}, 400),
        ("missing API key", c, {"prompt": "x"}, {"Authorization": ""}, 401),
        ("wrong API key", c, {"prompt": "x"}, {"Authorization": "Bearer nope"}, 401),
        ("unknown model", c, {"model": "gpt-9", "prompt": "x"}, {}, 404),
        ("body over --max-body-bytes", c, b'{"prompt": "' + b"x" * (3 << 20) + b'"}', {}, 413),
        ("unknown route", "/v1/nope", {"prompt": "x"}, {}, 404),
    ]


def _assert_error_shape(r: httpx.Response, name: str) -> None:
    assert "Traceback" not in r.text and 'File "' not in r.text, name
    if r.status_code >= 400:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}, (name, r.text)


def _slow_loris(port: int, n: int) -> list[socket.socket]:
    """Connections that send headers and a byte of body, then stall."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nAuthorization: Bearer " + API_KEY.encode() +
                  b"\r\nContent-Length: 100000\r\n\r\n{")
        socks.append(s)
    return socks


def test_hostile_inputs(tiny_llada2: Path) -> None:
    srv = RemoteServer(tiny_llada2, "--max-model-len", str(CTX), "--max-n", "2",
                       "--max-body-bytes", str(2 << 20), "--body-timeout", "3")
    slow: list[socket.socket] = []
    try:
        slow = _slow_loris(srv.port, 20)
        wrong = []
        with httpx.Client(timeout=120) as client:
            for name, path, body, headers, want in _cases():
                content = body if isinstance(body, bytes) else json.dumps(body).encode()
                h = {k: v for k, v in (H | headers).items() if v}
                r = client.post(srv.url + path, content=content, headers=h)
                _assert_error_shape(r, name)
                if r.status_code != want:
                    wrong.append((name, want, r.status_code, r.text[:200]))
            # a chunked upload that grows past the limit is cut off with a 413
            def chunks():  # noqa: ANN202
                for _ in range(5):
                    yield b"x" * (1 << 20)
            r = client.post(srv.url + "/v1/completions", content=chunks(), headers=H)
            _assert_error_shape(r, "chunked")
            if r.status_code != 413:
                wrong.append(("chunked body over the limit", 413, r.status_code, r.text[:200]))
            r = client.get(srv.url + "/v1/completions", headers=H)
            _assert_error_shape(r, "GET on a POST route")
            if r.status_code != 405:
                wrong.append(("GET on a POST route", 405, r.status_code, r.text[:200]))
        assert not wrong, wrong
        # the stalled connections hold nothing the others need
        t0 = time.monotonic()
        r = httpx.post(srv.url + "/v1/completions", headers=H, timeout=30,
                       json={"prompt": "still serving", "max_tokens": 4})
        assert r.status_code == 200 and time.monotonic() - t0 < 30
        assert httpx.get(srv.url + "/health").status_code == 200
        assert srv.metric("unmask:num_requests_running") == 0
        # the stalled bodies got a 408 and their connections were closed
        for s in slow:
            s.settimeout(30)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
            assert b"RequestTimeoutError" in reply
    finally:
        for s in slow:
            s.close()
        assert srv.stop() == 0
