"""`logit_bias` and `min_tokens` act on the logits before acceptance, for block diffusion (any
position of the active block) and AR alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.core import FinishReason, GenerateRequest, SamplingParams
from server.model.specials import read_special_ids
from tests.e2e.engine_harness import make_engine, make_prompt, run


@pytest.mark.parametrize("weights", ["tiny_llada2_peaky", "tiny_ling2"])
def test_logit_bias_forbids_and_forces(weights: str, request: pytest.FixtureRequest) -> None:
    model_dir: Path = request.getfixturevalue(weights)
    ids = make_prompt(model_dir, 12, seed=4)
    free = run(make_engine(model_dir), [("f", ids, SamplingParams(max_tokens=24,
                                                                   ignore_eos=True))])
    common = max(set(free.tokens["f"]), key=free.tokens["f"].count)
    banned = run(make_engine(model_dir), [("b", ids, SamplingParams(
        max_tokens=24, ignore_eos=True, logit_bias=((common, -100.0),)))])
    assert common not in banned.tokens["b"] and len(banned.tokens["b"]) == 24
    forced = run(make_engine(model_dir), [("x", ids, SamplingParams(
        max_tokens=10, ignore_eos=True, logit_bias=((42, 100.0),)))])
    assert forced.tokens["x"] == [42] * 10
    with pytest.raises(ValueError, match="logit_bias token id"):
        make_engine(model_dir).add_request(GenerateRequest(
            "v", (1, 2), SamplingParams(logit_bias=((10**7, 1.0),))))


@pytest.mark.parametrize("weights", ["tiny_llada2_peaky", "tiny_ling2"])
def test_min_tokens_defers_stops(weights: str, request: pytest.FixtureRequest) -> None:
    model_dir: Path = request.getfixturevalue(weights)
    ids = make_prompt(model_dir, 20, seed=5)
    free = run(make_engine(model_dir), [("f", ids, SamplingParams(max_tokens=64,
                                                                   ignore_eos=True))])
    stop = free.tokens["f"][2]  # a token the model writes early
    early = run(make_engine(model_dir), [("e", ids, SamplingParams(
        max_tokens=64, stop_token_ids=(stop,)))])
    assert len(early.tokens["e"]) <= 3 and early.reasons["e"] is FinishReason.STOP
    late = run(make_engine(model_dir), [("l", ids, SamplingParams(
        max_tokens=64, stop_token_ids=(stop,), min_tokens=20))])
    out = late.tokens["l"]
    assert stop not in out[:20] and len(out) >= 20
    eos = read_special_ids(model_dir).eos_ids
    assert late.reasons["l"] is FinishReason.LENGTH or out[-1] in (stop, *eos)
