"""The engine's LLaDA2.2 rule (`server.decoding.levenshtein.iterate`, one row, one forward at a
time) against the plain reference decoder on scripted models (tests/unit/
test_reference_levenshtein.py): the same block, the same forwards (plus one settle forward on
a budget end), for the threshold decode, the final-round scrub, every anti-loop scenario and
the iteration cap — cases a real checkpoint reaches rarely or never."""

from __future__ import annotations

import pytest
import torch

from server.core import Editing, GenerateRequest, LevenshteinState, SamplingParams, Sequence
from server.decoding import levenshtein
from server.decoding.levenshtein import EditIds
from tests.unit.test_reference_levenshtein import (
    DEL,
    MASK,
    SPL,
    A,
    B,
    Script,
    decode,
    dist,
    endless_script,
    final_round_script,
    random_fill,
    states,
    table,
)

IDS = EditIds(MASK, DEL, SPL)


def engine_block(script: Script, threshold: float, editing: float, posts: int
                 ) -> tuple[list[int], int]:
    """One generated block after a prompt block of B ones, driven like the engine: one
    `iterate` per forward until the block settles; (block, forwards)."""
    req = GenerateRequest("r", (1,) * B, SamplingParams(max_tokens=B))
    seq = Sequence(req=req, tokens=[1] * B, block=[MASK] * B, block_start=B,
                   editing=Editing(editing, posts), levenshtein=LevenshteinState())
    forwards = 0
    while not seq.block_settled:
        assert seq.block is not None and forwards <= levenshtein.cap(B, posts) + 1
        logits = torch.stack([dist(s) for s in script(list(seq.block), 1)])  # [B, V]
        choice, = levenshtein.choose(logits[None], IDS)
        levenshtein.iterate(seq, choice, IDS, threshold, seq.editing)  # type: ignore[arg-type]
        forwards += 1
    assert seq.block is not None
    return seq.block, forwards


S0, S1, S2 = states(), states(c2=40, c6=41), states(c6=45)
U = {i: states(**{f"c{i}": 60 + i}) for i in range(7)}
FIVE: dict = {S0: {"c6": {66: 0.9}}}
for _i in range(6, 2, -1):
    FIVE[U[_i]] = {f"c{_i}": {A[_i]: 0.9}, f"c{_i - 1}": {60 + _i - 1: 0.9}}
FIVE[U[2]] = {f"c{i}": {60 + i: 0.9} for i in range(7)}
FIVE[states(**{f"c{i}": 60 + i for i in range(7)})] = {
    f"c{i}": {A[i]: 0.9 - 0.01 * i, 60 + i: 0.05} for i in range(7)}

CASES: dict[str, tuple[Script, float, float, int]] = {
    "threshold decode": (random_fill, 0.6, 0.0, 16),
    "threshold decode, no post-steps": (random_fill, 0.6, 0.0, 0),
    "final-round scrub": (final_round_script, 0.5, 0.5, 2),
    "anti-loop": (table({S0: {"c2": {40: 0.9}, "c6": {41: 0.7, 45: 0.2}},
                         S1: {"c2": {12: 0.9}, "c6": {16: 0.7, 45: 0.2}}}), 0.5, 0.5, 16),
    "anti-loop, next cell": (table({S0: {"c6": {45: 0.9}},
                                    S2: {"c2": {40: 0.9}, "c6": {41: 0.7}},
                                    S1: {"c2": {12: 0.9, 46: 0.05},
                                         "c6": {16: 0.7, 45: 0.2}}}), 0.5, 0.5, 16),
    "anti-loop, all tries fail": (table({S0: {"c6": {45: 0.9}},
                                         S2: {"c6": {16: 0.9, 45: 0.05}}}), 0.5, 0.5, 16),
    "anti-loop, five cells": (table(FIVE), 0.5, 0.5, 16),
    "iteration cap": (endless_script, 0.5, 0.5, 4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_engine_rule_equals_the_reference(case: str) -> None:
    script, threshold, editing, posts = CASES[case]
    want, forwards, _, _ = decode(script, threshold=threshold, editing_threshold=editing,
                                  max_post_steps=posts)
    got, n = engine_block(script, threshold, editing, posts)
    assert got[: len(want)] == want
    (ref_n, kind), = forwards
    assert n == ref_n + (kind == "budget")  # a budget end costs the engine its settle forward
    assert n <= levenshtein.cap(B, posts) + 1
