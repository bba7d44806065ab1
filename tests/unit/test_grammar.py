"""Grammar compilation and the in-order acceptance rule, on the tiny tokenizer with real
xgrammar matchers and fresh random logits."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch

from server.core import GrammarKind, GrammarSpec
from server.grammar.accept import accept_in_order
from server.grammar.compiler import GrammarCompilerPool, GrammarError, check_schema
from server.grammar.matcher import GrammarState
from server.model.specials import read_special_ids

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "tags": {"type": "array", "items": {"enum": ["a{b", 'q"x', "é✓", "日本"]},
                 "maxItems": 3},
        "n": {"type": "integer", "minimum": -5, "maximum": 999},
        "inner": {"type": "object", "properties": {"ok": {"type": "boolean"}},
                  "required": ["ok"], "additionalProperties": False},
    },
    "required": ["name", "tags", "n", "inner"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def pool(tiny_llada2: Path) -> GrammarCompilerPool:
    cfg = json.loads((tiny_llada2 / "config.json").read_text())
    return GrammarCompilerPool(tiny_llada2, cfg["vocab_size"],
                               read_special_ids(tiny_llada2).eos_ids)


def compiled(pool: GrammarCompilerPool, schema: dict = SCHEMA):  # noqa: ANN201
    return pool.submit(GrammarSpec(GrammarKind.JSON_SCHEMA, json.dumps(schema))).result()


def test_compiles_are_cached_and_bad_specs_raise(pool: GrammarCompilerPool) -> None:
    spec = GrammarSpec(GrammarKind.JSON_SCHEMA, json.dumps(SCHEMA))
    assert pool.submit(spec) is pool.submit(spec)
    with pytest.raises(GrammarError, match="invalid json_schema"):
        pool.submit(GrammarSpec(GrammarKind.JSON_SCHEMA, '{"type": "nonsense"}')).result()
    with pytest.raises(GrammarError):
        check_schema({"type": 12})


def test_length_limited_strings_refuse_control_characters(pool: GrammarCompilerPool) -> None:
    """xgrammar 0.2.8 lets maxLength strings hold raw control characters; ours do not."""
    state = GrammarState(compiled(pool), pool.vocab_size)
    assert state.matcher.accept_string('{"name": "ab')
    assert not state.matcher.accept_string("\x10")
    assert not state.matcher.accept_string("\t")
    assert state.matcher.accept_string('c"')


def reference_in_order(logits: torch.Tensor, block: list[int], first: int, state: GrammarState,
                       threshold: float, min_commit: int) -> int:
    """The rule without the fast path: every position's logits masked before choosing."""
    n = 0
    for i in range(logits.shape[0]):
        row = state.masked(logits[i])
        p = row.softmax(-1)
        tok = int(row.argmax())
        if not (n < min_commit or float(p[tok]) > threshold):
            break
        assert state.accept(tok)
        block[first + i], n = tok, n + 1
        if state.terminated:
            break
    return n


@pytest.mark.parametrize("seed", range(6))
def test_fast_path_equals_always_masked_rule(pool: GrammarCompilerPool, tiny_llada2: Path,
                                             seed: int) -> None:
    """Fresh random logits, sharpened so some rows clear the threshold: both rules commit the
    same tokens every call, and the finished output is valid JSON for the schema."""
    g = torch.Generator().manual_seed(seed)
    B, V = 32, pool.vocab_size
    a, b = GrammarState(compiled(pool), V, pool.never), GrammarState(compiled(pool), V, pool.never)
    out: list[int] = []
    multi = 0
    for _ in range(200):
        logits = torch.randn(B, V, generator=g) * 4  # [B, V]
        block_a, block_b = [0] * B, [0] * B
        na = accept_in_order(logits.clone(), block_a, 0, a, 0.5, 1)
        nb = reference_in_order(logits.clone(), block_b, 0, b, 0.5, 1)
        assert (na, block_a[:na]) == (nb, block_b[:nb])
        assert na >= 1
        multi += na > 1
        out += block_a[:na]
        if a.terminated:
            break
    assert a.terminated and multi > 0
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(tiny_llada2))
    jsonschema.validate(json.loads(tok.decode(out, skip_special_tokens=True)), SCHEMA)
