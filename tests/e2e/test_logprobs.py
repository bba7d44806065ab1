"""Output log-probabilities from the engine equal the reference decoders' (docs/openai-api.md):
for block diffusion the log-softmax of the step that committed (LLaDA2.1: last wrote) each
token, mask id excluded; for the AR checkpoint the plain next-token log-softmax. Top
alternatives come from the same distribution, most likely first."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from server.core import GenerateRequest, SamplingParams, TokenLogprob
from server.model.specials import read_special_ids
from tests.e2e.engine_harness import _mask_id, make_engine, make_prompt
from tests.reference.decode import (
    reference_ar_greedy,
    reference_generate,
    reference_generate_editing,
)
from tests.reference.model import load_reference

TOP = 3


def engine_logprobs(model_dir: Path, reqs: list[tuple[str, list[int], SamplingParams]],
                    **opts: object) -> dict[str, tuple[list[int], list[TokenLogprob]]]:
    engine = make_engine(model_dir, **opts)
    for rid, ids, p in reqs:
        engine.add_request(GenerateRequest(rid, tuple(ids), p))
    out: dict[str, tuple[list[int], list[TokenLogprob]]] = {r: ([], []) for r, _, _ in reqs}
    while engine.has_work():
        for o in engine.step().outputs:
            assert o.logprobs is not None and len(o.logprobs) == len(o.new_token_ids)
            out[o.rid][0].extend(o.new_token_ids)
            out[o.rid][1].extend(o.logprobs)
    return out


def same(got: list[TokenLogprob], tokens: list[int], ref: dict[int, torch.Tensor]) -> None:
    assert len(got) == len(tokens) == len(ref)
    for k, (g, t) in enumerate(zip(got, tokens, strict=True)):
        want = ref[k]
        assert g.token_id == t
        assert g.logprob == pytest.approx(float(want[t]), abs=1e-4), k
        vals, ids = want.topk(TOP)
        assert [i for i, _ in g.top] == ids.tolist(), k
        assert [v for _, v in g.top] == pytest.approx(vals.tolist(), abs=1e-4)


def test_diffusion_logprobs_are_the_commit_step_distribution(tiny_llada2_peaky: Path) -> None:
    model_dir = tiny_llada2_peaky
    eos = read_special_ids(model_dir).eos_ids
    model = load_reference(model_dir)
    prompts = {f"d{P}": make_prompt(model_dir, P, seed=40 + P) for P in (5, 33)}
    reqs = [(rid, ids, SamplingParams(max_tokens=40, logprobs=TOP))
            for rid, ids in prompts.items()]
    reqs.append(("e", prompts["d5"], SamplingParams(max_tokens=40, logprobs=TOP,
                                                      threshold=0.7, editing_threshold=0.5)))
    got = engine_logprobs(model_dir, reqs)
    for rid, ids, p in reqs:
        ref: dict[int, torch.Tensor] = {}
        with torch.inference_mode():
            if p.editing_threshold is None:
                toks = reference_generate(model, ids, 40, mask_id=_mask_id(model_dir),
                                          eos_ids=eos, logprobs=ref)
            else:
                toks = reference_generate_editing(
                    model, ids, 40, threshold=0.7, editing_threshold=0.5, max_post_steps=16,
                    mask_id=_mask_id(model_dir), eos_ids=eos, logprobs=ref)
        ref = {k: v for k, v in ref.items() if k < len(toks)}
        assert got[rid][0] == toks
        same(got[rid][1], toks, ref)
    assert max(g.logprob for g in got["d5"][1]) > -0.05  # peaky: confident commits


def test_ar_logprobs_are_the_next_token_log_softmax(tiny_ling2: Path) -> None:
    model_dir = tiny_ling2
    eos = read_special_ids(model_dir).eos_ids
    model = load_reference(model_dir)
    ids = make_prompt(model_dir, 9, seed=1)
    got = engine_logprobs(model_dir, [("a", ids, SamplingParams(max_tokens=20,
                                                                 logprobs=TOP))])
    ref: dict[int, torch.Tensor] = {}
    with torch.inference_mode():
        toks = reference_ar_greedy(model, ids, 20, eos_ids=eos, logprobs=ref)
    assert got["a"][0] == toks
    same(got["a"][1], toks, ref)


def test_no_logprobs_unless_asked(tiny_llada2: Path) -> None:
    engine = make_engine(tiny_llada2)
    engine.add_request(GenerateRequest("n", (5, 6, 7), SamplingParams(max_tokens=8)))
    while engine.has_work():
        assert all(o.logprobs is None for o in engine.step().outputs)
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=21)


def test_ar_prompt_logprobs_equal_a_plain_forward(tiny_ling2: Path, tiny_llada2: Path) -> None:
    """echo + logprobs on an AR checkpoint: prompt token i's log-probability is the plain
    causal forward's log-softmax at i-1 (the first token has none), beside normal requests;
    a block-diffusion checkpoint refuses it."""
    from tests.reference.decode import block_causal_visible

    model_dir = tiny_ling2
    ids = make_prompt(model_dir, 40, seed=12)
    engine = make_engine(model_dir, max_running_requests=4)
    engine.add_request(GenerateRequest("n", tuple(make_prompt(model_dir, 9, seed=2)),
                                       SamplingParams(max_tokens=6)))
    engine.add_request(GenerateRequest("p", tuple(ids), SamplingParams(
        max_tokens=5, logprobs=1, prompt_logprobs=2)))
    firsts = {}
    while engine.has_work():
        for o in engine.step().outputs:
            firsts.setdefault(o.rid, o)
    got = firsts["p"].prompt_logprobs
    assert firsts["n"].prompt_logprobs is None and got is not None and got[0] is None
    with torch.inference_mode():
        logits = load_reference(model_dir).forward(torch.tensor(ids),
                                                   block_causal_visible(len(ids), 1))
    ref = logits.log_softmax(-1)
    assert len(got) == len(ids)
    for i in range(1, len(ids)):
        e = got[i]
        assert e is not None and e.token_id == ids[i]
        assert e.logprob == pytest.approx(float(ref[i - 1, ids[i]]), abs=1e-4)
        assert [t for t, _ in e.top] == ref[i - 1].topk(2).indices.tolist()
    with pytest.raises(ValueError, match="block-diffusion"):
        make_engine(tiny_llada2).add_request(GenerateRequest(
            "d", (5, 6, 7), SamplingParams(prompt_logprobs=0)))
