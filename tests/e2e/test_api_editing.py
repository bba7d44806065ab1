"""LLaDA2.1 editing through the real server (`--decoding-preset quality`) and the openai SDK:
streams carry whole completed blocks only and reassemble the non-streamed answer; per-request
fields switch editing off or change it; structured output stays valid with editing on; the
edit metrics move; bad values are 400s naming the field."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.core import Editing
from server.model.specials import read_special_ids
from tests.e2e.engine_harness import make_prompt, reference, reference_traced
from tests.e2e.server_harness import API_KEY, RemoteServer
from tests.e2e.structured_workload import gather_limited, required_tool_request, schema_request

BLOCK = 32


@pytest.fixture(scope="module")
def server(tiny_llada2_peaky: Path) -> Iterator[RemoteServer]:
    srv = RemoteServer(tiny_llada2_peaky, "--decoding-preset", "quality", "--num-pages", "1024",
                       "--max-running-requests", "16")
    yield srv
    assert srv.stop() == 0


def completion(server: RemoteServer, prompt: list[int], stream: bool, **extra: object
               ) -> tuple[list[list[int]], str, str | None]:
    """(token ids per chunk, text, finish reason) of a greedy /v1/completions request."""
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 70,
            "extra_body": {"return_token_ids": True, **extra}}
    client = server.client()
    if not stream:
        r = client.completions.create(**body)
        c = r.choices[0]
        return [c.model_extra["token_ids"]], c.text, c.finish_reason
    chunks, text, reason = [], "", None
    for ev in client.completions.create(stream=True, **body):
        c = ev.choices[0]
        if c.model_extra.get("token_ids"):
            chunks.append(c.model_extra["token_ids"])
        text += c.text
        reason = c.finish_reason or reason
    return chunks, text, reason


def test_stream_sends_only_final_blocks_and_equals_the_answer(server: RemoteServer,
                                                              tiny_llada2_peaky: Path) -> None:
    eos = read_special_ids(tiny_llada2_peaky).eos_ids
    for P in (7, 32, 45):
        prompt = make_prompt(tiny_llada2_peaky, P, seed=900 + P)
        (whole,), text, reason = completion(server, prompt, stream=False)
        chunks, s_text, s_reason = completion(server, prompt, stream=True)
        assert sum(chunks, []) == whole and s_text == text and s_reason == reason
        end = P
        for c in chunks[:-1]:  # every chunk but the last ends on a block boundary
            end += len(c)
            assert end % BLOCK == 0, [len(c) for c in chunks]
        ref = reference_traced(tiny_llada2_peaky, prompt, 70, eos, threshold=0.7,
                               editing=Editing(0.5, 16))
        if ref.margin >= 1e-5:
            assert whole == ref.tokens


def test_per_request_fields(server: RemoteServer, tiny_llada2_peaky: Path) -> None:
    eos = read_special_ids(tiny_llada2_peaky).eos_ids
    prompt = make_prompt(tiny_llada2_peaky, 20, seed=77)
    (off,), _, _ = completion(server, prompt, stream=False, editing_threshold="off",
                              threshold=0.95)
    assert off == reference(tiny_llada2_peaky, prompt, 70, eos)  # the LLaDA2.0 rule
    (speed,), _, _ = completion(server, prompt, stream=False, threshold=0.5,
                                editing_threshold=0.0, max_post_steps=4)
    ref = reference_traced(tiny_llada2_peaky, prompt, 70, eos, threshold=0.5,
                           editing=Editing(0.0, 4))
    if ref.margin >= 1e-5:
        assert speed == ref.tokens
    h = {"Authorization": f"Bearer {API_KEY}"}
    for bad in ({"editing_threshold": 1.5}, {"editing_threshold": "on"},
                {"max_post_steps": -1}):
        r = httpx.post(server.url + "/v1/completions", headers=h,
                       json={"model": "tiny", "prompt": "hi", "max_tokens": 4, **bad})
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["param"] == next(iter(bad)), r.text


def test_structured_output_stays_valid_with_editing(tiny_llada2: Path) -> None:
    """Maximal editing by default (speed preset) on the weights the structured-output suite
    uses; constrained requests share steps with each other and validate."""
    srv = RemoteServer(tiny_llada2, "--decoding-preset", "speed", "--num-pages", "2048",
                       "--max-running-requests", "16")

    async def workload(request) -> None:  # noqa: ANN001 - one of the structured requests
        client = srv.async_client(timeout=300)
        await gather_limited(24, 12, lambda i: request(client, i, i % 2 == 0))

    try:
        asyncio.run(workload(schema_request))  # each validates its output
        asyncio.run(workload(required_tool_request))
    finally:
        assert srv.stop() == 0


def test_edit_metrics_move(server: RemoteServer) -> None:
    assert server.metric("unmask:edits_per_block_count") > 0
    assert server.metric("unmask:post_steps_per_block_count") > 0
    assert server.metric("unmask:edits_per_block_sum") > 0
