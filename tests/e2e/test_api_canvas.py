"""The canvas stream extension (`stream_options.include_canvas`, docs/playground.md) through a
real server: replaying a greedy request's frames reproduces its tokens exactly (with LLaDA2.1
editing on and off), frames show masked cells, multi-cell commits and block completions, and
count the server's forwards; with the extension off or absent the SSE chunks are unchanged;
an autoregressive checkpoint refuses it with a 400 naming the parameter."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.engine_harness import make_prompt
from tests.e2e.server_harness import API_KEY, RemoteServer

HEADERS = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def server(tiny_llada2_peaky: Path) -> Iterator[RemoteServer]:
    srv = RemoteServer(tiny_llada2_peaky, "--decoding-preset", "quality", "--num-pages", "512")
    yield srv
    assert srv.stop() == 0


def _sse(srv: RemoteServer, path: str, body: dict) -> list[str]:
    """The raw `data:` payloads of a streamed request, [DONE] included."""
    with httpx.stream("POST", srv.url + path, headers=HEADERS, json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        return [line.removeprefix("data: ") for line in r.iter_lines() if line]


def _frames(payloads: list[str]) -> list[dict]:
    return [c["canvas"] for p in payloads[:-1] for c in json.loads(p)["choices"]
            if "canvas" in c]


@pytest.mark.parametrize("editing", ["off", 0.5])
@pytest.mark.parametrize("chat", [False, True])
def test_replaying_frames_reproduces_the_tokens(server: RemoteServer, tiny_llada2_peaky: Path,
                                                editing: object, chat: bool) -> None:
    prompt = make_prompt(tiny_llada2_peaky, 20, seed=3)
    body: dict = {"model": "tiny", "max_tokens": 90, "ignore_eos": True,
                  "editing_threshold": editing, "return_token_ids": True, "threshold": 0.99}
    body |= ({"messages": [{"role": "user", "content": "tell me about blocks"}]} if chat
             else {"prompt": prompt})
    path = "/v1/chat/completions" if chat else "/v1/completions"
    plain = httpx.post(server.url + path, headers=HEADERS, json=body, timeout=120).json()
    want = plain["choices"][0]["token_ids"]
    payloads = _sse(server, path, body | {"stream": True,
                                          "stream_options": {"include_canvas": True}})
    frames = _frames(payloads)
    cells: dict[int, int] = {}
    for f in frames:
        assert len(f["tokens"]) == len(f["text"]) == len(f["confidence"]) == 32
        for o, t in enumerate(f["tokens"]):
            if t is not None:
                cells[f["block_start"] + o] = t
    start = frames[0]["prompt_len"]
    assert [cells[start + k] for k in range(len(want))] == want  # replay == the answer
    streamed = [t for p in payloads[:-1] for c in json.loads(p)["choices"]
                for t in c.get("token_ids") or []]
    assert streamed == want
    assert [f["forwards"] for f in frames] == list(range(1, len(frames) + 1))
    assert any(None in f["tokens"] for f in frames)  # masked cells were shown
    assert any(len(f["committed"]) > 1 for f in frames)  # several cells in one forward
    assert any(None in f["tokens"] and sum(t is not None for t in f["tokens"]) > 1
               for f in frames)  # a render with masked cells and several decided ones
    done = [f for f in frames if f["block_done"]]
    assert len(done) >= 2 and all(None not in f["tokens"] for f in done)
    for f in frames:  # steps count forwards within a block, restarting after a completion
        assert f["step"] >= 1 and all(f["confidence"][o] is not None
                                      for o in f["committed"] + f["edited"])
        assert all(0 < f["confidence"][o] <= 1 for o in f["committed"])
        for o, t in enumerate(f["tokens"]):  # prompt cells: no confidence
            if f["block_start"] + o < f["prompt_len"]:
                assert f["confidence"][o] is None and t is not None


def _normalised(payloads: list[str]) -> list[str]:
    return [re.sub(r'"(id|created)":("[^"]*"|\d+)', r'"\1":0', p) for p in payloads]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_chunks_unchanged_without_the_extension(server: RemoteServer, tiny_llada2_peaky: Path,
                                                path: str) -> None:
    body: dict = {"model": "tiny", "max_tokens": 70, "stream": True,
                  "stream_options": {"include_usage": True}}
    body |= ({"messages": [{"role": "user", "content": "hello"}]} if "chat" in path
             else {"prompt": make_prompt(tiny_llada2_peaky, 12, seed=4)})
    base = _normalised(_sse(server, path, body))
    off = _normalised(_sse(server, path, body | {
        "stream_options": {"include_usage": True, "include_canvas": False}}))
    assert off == base and not any("canvas" in p for p in base)
    on = _sse(server, path, body | {
        "stream_options": {"include_usage": True, "include_canvas": True}})
    stripped = []  # the canvas-on stream without its frames is the plain stream
    for p in on[:-1]:
        chunk = json.loads(p)
        for c in chunk["choices"]:
            c.pop("canvas", None)
        empty = chunk["choices"] and all(
            c.get("delta", {}) == {} and c.get("text", "") == "" and c["finish_reason"] is None
            for c in chunk["choices"])
        if not empty:
            stripped.append(json.dumps(chunk, ensure_ascii=False, separators=(",", ":")))
    assert _normalised(stripped + on[-1:]) == base


def test_autoregressive_checkpoint_refuses_it(tiny_ling2: Path) -> None:
    srv = RemoteServer(tiny_ling2, "--num-pages", "64")
    try:
        r = httpx.post(srv.url + "/v1/completions", headers=HEADERS, timeout=60, json={
            "model": "tiny", "prompt": "hi", "max_tokens": 4, "stream": True,
            "stream_options": {"include_canvas": True}})
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "stream_options.include_canvas"
        # what a client checks first: the model card says how the model decodes
        card = srv.client().models.retrieve("tiny").model_extra or {}
        assert card["decoding"] == {"kind": "autoregressive"}
    finally:
        srv.stop()


def test_llada22_frames_replay_and_report_moved_cells(tiny_llada22_peaky: Path) -> None:
    """On a LLaDA2.2 checkpoint cells move within a block (DELETE/SPLIT): replaying the frames
    still gives the answer; masked cells never carry a confidence; no frame shows an edit id."""
    from server.model.specials import read_special_ids

    sp = read_special_ids(tiny_llada22_peaky)
    srv = RemoteServer(tiny_llada22_peaky, "--num-pages", "512")
    try:
        body = {"model": "tiny", "prompt": make_prompt(tiny_llada22_peaky, 45, seed=11),
                "max_tokens": 90, "ignore_eos": True, "threshold": 0.5,
                "return_token_ids": True}
        want = httpx.post(srv.url + "/v1/completions", headers=HEADERS, json=body,
                          timeout=120).json()["choices"][0]["token_ids"]
        frames = _frames(_sse(srv, "/v1/completions", body | {
            "stream": True, "stream_options": {"include_canvas": True}}))
    finally:
        srv.stop()
    cells: dict[int, int] = {}
    for f in frames:
        for o, t in enumerate(f["tokens"]):
            if t is not None:
                cells[f["block_start"] + o] = t
            else:
                assert f["confidence"][o] is None
        if f["block_done"]:
            assert {sp.delete_id, sp.split_id} & set(f["tokens"]) == set()
    start = frames[0]["prompt_len"]
    assert [cells[start + k] for k in range(len(want))] == want
    assert any(f["edited"] for f in frames)  # the peaky checkpoint edits
