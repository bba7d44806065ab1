"""Logprobs, logit_bias and min_tokens through real servers and the openai SDK: values equal the
reference decoders' (block diffusion: the commit step's distribution; AR: the next-token
log-softmax), streamed chunks carry the same entries as the whole answer, shapes validate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch

from server.model.specials import read_special_ids
from tests.e2e.engine_harness import _mask_id, make_prompt
from tests.e2e.server_harness import API_KEY, RemoteServer
from tests.reference.decode import reference_ar_greedy, reference_generate
from tests.reference.model import load_reference


@pytest.fixture(scope="module")
def dllm(tiny_llada2_peaky: Path) -> Iterator[RemoteServer]:
    srv = RemoteServer(tiny_llada2_peaky, "--num-pages", "512")
    yield srv
    assert srv.stop() == 0


def strict(srv: RemoteServer) -> openai.OpenAI:
    return srv.client(_strict_response_validation=True)


def test_completions_logprobs_equal_the_commit_step(dllm: RemoteServer,
                                                    tiny_llada2_peaky: Path) -> None:
    model_dir = tiny_llada2_peaky
    ids = make_prompt(model_dir, 21, seed=8)
    r = strict(dllm).completions.create(model="tiny", prompt=ids, max_tokens=40, logprobs=2,
                                        extra_body={"return_token_ids": True})
    c = r.choices[0]
    toks = c.model_extra["token_ids"]
    ref: dict[int, torch.Tensor] = {}
    with torch.inference_mode():
        want = reference_generate(load_reference(model_dir), ids, 40,
                                  mask_id=_mask_id(model_dir),
                                  eos_ids=read_special_ids(model_dir).eos_ids, logprobs=ref)
    assert toks == want and c.logprobs is not None
    assert len(c.logprobs.token_logprobs) == len(toks) == len(c.logprobs.tokens)
    for k, t in enumerate(toks):
        assert c.logprobs.token_logprobs[k] == pytest.approx(float(ref[k][t]), abs=1e-4)
        assert len(c.logprobs.top_logprobs[k]) <= 2
    assert c.logprobs.text_offset[0] == 0
    streamed = []
    for ch in dllm.client().completions.create(model="tiny", prompt=ids, max_tokens=40,
                                               logprobs=2, stream=True):
        if ch.choices and ch.choices[0].logprobs:
            streamed += ch.choices[0].logprobs.token_logprobs
    assert streamed == c.logprobs.token_logprobs


def test_chat_logprobs_stream_and_whole_agree(dllm: RemoteServer) -> None:
    msgs = [{"role": "user", "content": "Write a function."}]
    r = strict(dllm).chat.completions.create(model="tiny", messages=msgs, max_tokens=30,
                                             logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(e.top_logprobs) == 3 and e.top_logprobs[0].logprob >= e.logprob - 1e-6
               for e in content)
    assert all(e.bytes == list(e.token.encode()) for e in content)
    streamed = []
    for ch in strict(dllm).chat.completions.create(model="tiny", messages=msgs, max_tokens=30,
                                                   logprobs=True, top_logprobs=3,
                                                   stream=True):
        if ch.choices and ch.choices[0].logprobs and ch.choices[0].logprobs.content:
            streamed += ch.choices[0].logprobs.content
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
    plain = strict(dllm).chat.completions.create(model="tiny", messages=msgs, max_tokens=30)
    assert plain.choices[0].logprobs is None


def test_ar_logprobs_equal_the_next_token_log_softmax(tiny_ling2: Path) -> None:
    ids = make_prompt(tiny_ling2, 11, seed=9)
    srv = RemoteServer(tiny_ling2, "--num-pages", "256")
    try:
        r = strict(srv).completions.create(model="tiny", prompt=ids, max_tokens=12,
                                           logprobs=1, extra_body={"return_token_ids": True})
        streamed = [lp for ch in srv.client().completions.create(
            model="tiny", prompt=ids, max_tokens=12, logprobs=1, stream=True)
            if ch.choices and ch.choices[0].logprobs
            for lp in ch.choices[0].logprobs.token_logprobs]
        chat = strict(srv).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
            logprobs=True, top_logprobs=2)
        # not strict: OpenAI (and vLLM) answer null for the first prompt token, which the
        # SDK's types (List[float]) do not allow
        echoed = srv.client().completions.create(model="tiny", prompt=ids, max_tokens=12,
                                                 logprobs=1, echo=True)
        streamed_echo = httpx.post(srv.url + "/v1/completions", headers={
            "Authorization": f"Bearer {API_KEY}"}, json={
            "model": "tiny", "prompt": ids, "max_tokens": 4, "logprobs": 1, "echo": True,
            "stream": True})
    finally:
        assert srv.stop() == 0
    assert streamed == r.choices[0].logprobs.token_logprobs
    assert len(chat.choices[0].logprobs.content) == chat.usage.completion_tokens
    # echo + logprobs: the prompt's tokens first (the first has none), then the output's
    e = echoed.choices[0].logprobs
    assert len(e.tokens) == len(ids) + 12 and e.token_logprobs[0] is None
    assert e.token_logprobs[len(ids):] == r.choices[0].logprobs.token_logprobs
    with torch.inference_mode():
        from tests.reference.decode import block_causal_visible

        full = load_reference(tiny_ling2).forward(torch.tensor(ids),
                                                  block_causal_visible(len(ids), 1))
    lsm = full.log_softmax(-1)
    for i in range(1, len(ids)):
        assert e.token_logprobs[i] == pytest.approx(float(lsm[i - 1, ids[i]]), abs=1e-4)
    assert e.text_offset == sorted(e.text_offset) and e.text_offset[0] == 0
    assert streamed_echo.status_code == 400
    assert streamed_echo.json()["error"]["param"] == "echo"
    ref: dict[int, torch.Tensor] = {}
    with torch.inference_mode():
        want = reference_ar_greedy(load_reference(tiny_ling2), ids, 12,
                                   eos_ids=read_special_ids(tiny_ling2).eos_ids, logprobs=ref)
    c = r.choices[0]
    assert c.model_extra["token_ids"] == want
    for k, t in enumerate(want):
        assert c.logprobs.token_logprobs[k] == pytest.approx(float(ref[k][t]), abs=1e-4)


def test_logit_bias_min_tokens_and_refusals(dllm: RemoteServer) -> None:
    r = dllm.client().completions.create(model="tiny", prompt="hello", max_tokens=8,
                                         logit_bias={"42": 100},
                                         extra_body={"return_token_ids": True})
    assert r.choices[0].model_extra["token_ids"] == [42] * 8
    h = {"Authorization": f"Bearer {API_KEY}"}
    for body, param in (
            ({"prompt": "hi", "echo": True, "logprobs": 1}, "echo"),
            ({"prompt": "hi", "logprobs": 6}, "logprobs"),
            ({"prompt": "hi", "logit_bias": {"x": 1}}, "logit_bias"),
            ({"prompt": "hi", "logit_bias": {"99999999": 1}}, None),
            ({"prompt": "hi", "presence_penalty": 0.5}, "presence_penalty"),
            ({"prompt": "hi", "min_tokens": 99, "max_tokens": 4}, None)):
        resp = httpx.post(dllm.url + "/v1/completions", headers=h,
                          json={"model": "tiny", "max_tokens": 4} | body)
        assert resp.status_code == 400, (body, resp.text)
        if param:
            assert resp.json()["error"]["param"] == param, resp.text
    resp = httpx.post(dllm.url + "/v1/chat/completions", headers=h, json={
        "model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "top_logprobs"
