"""Grammar-constrained decoding in the engine: every output is grammatical and complete,
greedy outputs do not depend on concurrency or preemption, unconstrained neighbours still equal
the reference decoder, and failures or aborts while a grammar compiles leak nothing."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from server.api.tools.hermes import HermesToolParser
from server.core import FinishReason, GenerateRequest, GrammarKind, GrammarSpec, SamplingParams
from server.model.specials import read_special_ids
from server.model.tokenizer import TokenizerInfo
from tests.e2e.engine_harness import make_engine, make_prompt, reference, run
from tests.unit.test_grammar import SCHEMA

SPEC = GrammarSpec(GrammarKind.JSON_SCHEMA, json.dumps(SCHEMA))
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                     "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"], "additionalProperties": False}}}]


def tool_spec(model_dir: Path) -> GrammarSpec:
    tag = HermesToolParser().structural_tag(
        TOOLS, parallel=False, special_tokens=set(TokenizerInfo(model_dir).special_tokens))
    return GrammarSpec(GrammarKind.STRUCTURAL_TAG, json.dumps(tag))


def decode(model_dir: Path, ids: list[int], keep: tuple[str, ...] = ()) -> str:
    return TokenizerInfo(model_dir).keeping(keep).decode(ids)


@pytest.mark.parametrize(("weights", "pages", "editing"), [
    ("tiny_llada2", 16, "off"), ("tiny_llada2_peaky", 9, "off"), ("tiny_llada2", 16, 0.0)])
def test_constrained_outputs_are_valid_and_independent_of_batching(
        weights: str, pages: int, editing: float | str, request: pytest.FixtureRequest) -> None:
    """Also with LLaDA2.1 editing on by default (0.0: maximal), where constrained requests keep
    the in-order rule (docs/editing.md) beside editing neighbours."""
    model_dir: Path = request.getfixturevalue(weights)
    tools = tool_spec(model_dir)
    reqs = [(f"r{i}", make_prompt(model_dir, 40 + 9 * i, seed=i), SamplingParams(max_tokens=160),
             SPEC if i % 2 else tools) for i in range(10)]
    if editing != "off":  # unconstrained, editing requests share the steps
        reqs += [(f"e{i}", make_prompt(model_dir, 30 + 5 * i, seed=50 + i),
                  SamplingParams(max_tokens=60, ignore_eos=True)) for i in range(3)]
    alone = {}
    for r in reqs:
        alone.update(run(make_engine(model_dir, editing_threshold=editing), [r]).tokens)
    engine = make_engine(model_dir, max_running_requests=8, num_pages=pages,
                         editing_threshold=editing)
    together = run(engine, reqs, stagger=1)
    assert together.preempted > 0
    assert together.tokens == alone
    assert engine.kv.pool.num_used == 0
    eos = read_special_ids(model_dir).eos_ids
    for rid, _, _, *grammar in reqs:
        if not grammar:
            continue
        spec, out = grammar[0], together.tokens[rid]
        assert together.reasons[rid] is FinishReason.STOP and out[-1] in eos
        text = decode(model_dir, out, keep=HermesToolParser.keep_tokens)
        if spec is SPEC:
            jsonschema.validate(json.loads(text), SCHEMA)
        else:
            calls = HermesToolParser().parse(text).calls
            assert [c.name for c in calls] == ["get_weather"], text
            jsonschema.validate(json.loads(calls[0].arguments),
                                TOOLS[0]["function"]["parameters"])


def test_unconstrained_neighbours_equal_the_reference(tiny_llada2_peaky: Path) -> None:
    model_dir = tiny_llada2_peaky
    eos = read_special_ids(model_dir).eos_ids
    free = [(f"f{i}", make_prompt(model_dir, 20 + i, seed=50 + i), SamplingParams(max_tokens=70))
            for i in range(4)]
    constrained = [(f"c{i}", make_prompt(model_dir, 9, seed=i), SamplingParams(max_tokens=120),
                    SPEC) for i in range(4)]
    result = run(make_engine(model_dir), [x for pair in zip(free, constrained, strict=True)
                                          for x in pair], stagger=1)
    for rid, ids, params in free:
        assert result.tokens[rid] == reference(model_dir, ids, params.max_tokens, eos)


def test_forced_tokens_commit_several_per_forward(tiny_llada2: Path) -> None:
    """Flat random weights commit ~1 token per forward unconstrained; under a grammar, the
    positions it forces have masked confidence 1 and commit together."""
    engine = make_engine(tiny_llada2)
    engine.add_request(GenerateRequest("t", tuple(make_prompt(tiny_llada2, 8, seed=3)),
                                       SamplingParams(max_tokens=160), grammar=tool_spec(
                                           tiny_llada2)))
    stats = None
    while engine.has_work():
        for o in engine.step().outputs:
            stats = o.stats if o.finished else stats
    assert stats is not None and stats.tokens_per_forward > 1.5


def test_ar_checkpoint_follows_the_grammar(tiny_ling2: Path) -> None:
    reqs = [(f"a{i}", make_prompt(tiny_ling2, 6 + i, seed=i), SamplingParams(max_tokens=120),
             SPEC) for i in range(3)]
    result = run(make_engine(tiny_ling2), reqs)
    for rid, *_ in reqs:
        jsonschema.validate(json.loads(decode(tiny_ling2, result.tokens[rid])), SCHEMA)


def test_bad_grammar_and_abort_while_compiling_leak_nothing(tiny_llada2: Path) -> None:
    engine = make_engine(tiny_llada2)
    p = SamplingParams(max_tokens=20)
    ids = tuple(make_prompt(tiny_llada2, 5, seed=0))
    engine.add_request(GenerateRequest("bad", ids, p, grammar=GrammarSpec(
        GrammarKind.JSON_SCHEMA, '{"type": "nonsense"}')))
    engine.add_request(GenerateRequest("gone", ids, p, grammar=SPEC))
    assert engine.snapshot().num_waiting == 2
    aborted = engine.abort("gone")
    assert aborted is not None and aborted.finish_reason is FinishReason.ABORT
    outs = []
    while engine.has_work():
        outs += engine.step().outputs
    (bad,) = outs
    assert bad.rid == "bad" and bad.finish_reason is FinishReason.ERROR and bad.bad_request
    assert "nonsense" in (bad.error or "")
    s = engine.snapshot()
    assert (s.num_waiting, s.num_running, s.pages_used) == (0, 0, 0)
