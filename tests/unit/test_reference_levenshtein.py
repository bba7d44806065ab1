"""The LLaDA2.2 Levenshtein reference decoder (tests/reference/levenshtein.py) against
docs/llada22.md, driven by scripted fake models (exact scenarios, no checkpoint), plus a smoke
run on the tiny peaky LLaDA2.2 checkpoint."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
import torch

from tests.reference.decode import reference_generate
from tests.reference.levenshtein import reference_generate_levenshtein
from tests.reference.model import ReferenceModel

V, B = 128, 32  # ordinary ids 0..99
MASK, DEL, SPL, EOS, EOS2 = 100, 101, 102, 103, 104
A = [10 + i for i in range(B)]  # the block every "fill" script writes first

INIT = [MASK] * B  # a block's state at its start (no prompt cells)

# id → probability, the rest spread evenly over the other non-mask ids; or a [V] logits row
Spec = dict[int, float] | torch.Tensor
Script = Callable[[list[int], int], list[Spec]]  # (active block ids, block index) → per cell


def dist(spec: Spec) -> torch.Tensor:
    """[V] logits whose softmax without the mask id gives `spec`'s probabilities exactly."""
    if isinstance(spec, torch.Tensor):
        return spec
    rest = [t for t in range(V) if t != MASK and t not in spec]
    probs = torch.full((V,), (1.0 - sum(spec.values())) / len(rest), dtype=torch.float64)
    for t, q in spec.items():
        probs[t] = q
    probs[MASK] = 1.0  # any value: the decoder sets the mask logit to −inf
    return probs.log().float()


class Scripted:
    """A fake model: the active (last) block's logits come from `script`, the rest are zeros."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.calls = 0

    def forward(self, ids: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        n = ids.shape[0]
        assert n % B == 0 and visible.shape == (n, n)
        logits = torch.zeros(n, V)
        for i, spec in enumerate(self.script(ids[-B:].tolist(), n // B - 1)):
            logits[n - B + i] = dist(spec)
        return logits


def own(block: list[int], fill: Callable[[int], Spec] | None = None,
        **cells: Spec) -> list[Spec]:
    """Each non-mask cell predicts its own id (0.95), each mask `fill(i)` (default A[i] at
    0.95); `cells` ("c5"=spec) overrides cell 5."""
    out = [{t: 0.95} if t != MASK else (fill(i) if fill else {A[i]: 0.95})
           for i, t in enumerate(block)]
    for k, spec in cells.items():
        out[int(k[1:])] = spec
    return out


def decode(script: Script, prompt: list[int] | None = None, gen_length: int = B, *,
           threshold: float = 0.5, editing_threshold: float | None = 0.5,
           max_post_steps: int = 16) -> tuple[list[int], list[tuple[int, str]], list[dict],
                                              Scripted]:
    model = Scripted(script)
    forwards: list[tuple[int, str]] = []
    trace: list[dict] = []
    out = reference_generate_levenshtein(
        model, prompt if prompt is not None else [1] * B, gen_length, block_length=B,
        threshold=threshold, editing_threshold=editing_threshold,
        max_post_steps=max_post_steps, mask_id=MASK, delete_id=DEL, split_id=SPL,
        eos_ids=[EOS, EOS2], forwards=forwards, trace=trace)
    return out, forwards, trace, model


def iterations(trace: list[dict]) -> list[dict]:
    return [t for t in trace if "M" in t]


# (a) no edits: the LLaDA2.0 threshold decode


def random_fill(block: list[int], b: int) -> list[Spec]:
    """Masked cells: pseudo-random logits over the ordinary ids and EOS that depend on the
    cell, the block and how many masks are left; written cells predict themselves."""
    n_masks = block.count(MASK)
    out: list[Spec] = []
    for i, t in enumerate(block):
        row = torch.full((V,), -30.0)
        if t != MASK:
            row[t] = 0.0
        else:
            g = torch.Generator().manual_seed(1000 * b + 37 * i + n_masks)
            row[:100] = torch.randn(100, generator=g) * 2.5
            row[EOS] = float(torch.randn(1, generator=g)) * 2.5
        out.append(row)
    return out


@pytest.mark.parametrize("P,gen_length", [(5, 70), (32, 64), (45, 40)])
def test_no_edits_equals_threshold_decode(P: int, gen_length: int) -> None:
    prompt = [(7 * i) % 100 for i in range(P)]
    plain = Scripted(random_fill)
    expect = reference_generate(cast(ReferenceModel, plain), prompt, gen_length, block_length=B,
                                threshold=0.6, mask_id=MASK, eos_ids=[EOS, EOS2], min_commit=1)
    for post, kind, extra in ((16, "stable", 1), (0, "budget", 0)):
        model = Scripted(random_fill)
        forwards: list[tuple[int, str]] = []
        trace: list[dict] = []
        got = reference_generate_levenshtein(
            model, prompt, gen_length, block_length=B, threshold=0.6, editing_threshold=0.0,
            max_post_steps=post, mask_id=MASK, delete_id=DEL, split_id=SPL,
            eos_ids=[EOS, EOS2], forwards=forwards, trace=trace)
        assert got == expect
        assert {k for _, k in forwards} == {kind}
        # a stable block costs the 2.0 forwards plus one confirmation pass
        assert model.calls == plain.calls + extra * len(forwards)
        assert any(len(t["m2t"]) > 1 for t in iterations(trace))  # the threshold commits
        assert any(len(t["m2t"]) == 1 and t["M"] != t["m2t"] for t in iterations(trace))


def test_fallback_ties_take_the_lower_index() -> None:
    out, forwards, trace, _ = decode(lambda blk, b: own(blk, lambda i: {7: 0.3}))
    assert out == [7] * B and forwards == [(B + 1, "stable")]
    assert [t["m2t"] for t in iterations(trace)][:B] == [[i] for i in range(B)]


# (b) DELETE, (c) SPLIT


def test_delete_shifts_left_and_pads_a_new_mask() -> None:
    def script(blk: list[int], b: int) -> list[Spec]:
        if blk == A:
            return own(blk, c5={DEL: 0.99})
        if blk == INIT:
            return own(blk)
        return own(blk, lambda i: {9: 0.3})  # below the threshold: the fallback fills it

    out, forwards, trace, _ = decode(script)
    assert out == A[:5] + A[6:] + [9]
    assert forwards == [(4, "stable")]
    it = iterations(trace)
    assert it[1]["writes"] == {5: DEL} and it[1]["block_ids"] == A[:5] + A[6:] + [MASK]
    assert it[1]["orig"] == [True] * 31 + [False] and it[1]["end"] is None
    # the padded mask is new: post keeps counting, need = 1 + n_new = 2 > |M| = 1
    assert (it[2]["M"], it[2]["o"], it[2]["n_new"], it[2]["post"]) == ([31], 0, 1, 2)
    assert it[2]["m2t"] == [31] and not it[2]["final"]
    assert it[3]["end"] == "stable"


def test_split_inserts_a_mask_before_the_old_token() -> None:
    def script(blk: list[int], b: int) -> list[Spec]:
        if blk == A:
            return own(blk, c5={SPL: 0.99})
        if blk == INIT:
            return own(blk)
        return own(blk, lambda i: {9: 0.9})

    out, forwards, trace, _ = decode(script)
    assert out == A[:5] + [9] + A[5:31]  # A[31] was pushed out of the block
    it = iterations(trace)
    assert it[1]["block_ids"] == A[:5] + [MASK] + A[5:31]
    assert it[1]["orig"][4:7] == [True, False, True]
    assert forwards == [(4, "stable")]


def test_split_on_a_masked_cell_gives_two_masks() -> None:
    def script(blk: list[int], b: int) -> list[Spec]:
        if blk == INIT:
            return own(blk, c3={SPL: 0.99})
        return own(blk, lambda i: {50 + i: 0.9})

    out, forwards, trace, _ = decode(script)
    it = iterations(trace)
    assert it[0]["block_ids"] == A[:3] + [MASK, MASK] + A[4:31]
    assert it[0]["orig"][3:5] == [False, True]  # the inserted mask is new, old_3 keeps its flag
    assert (it[1]["M"], it[1]["o"], it[1]["n_new"], it[1]["m2t"]) == ([3, 4], 1, 1, [3, 4])
    assert out == A[:3] + [53, 54] + A[4:31]
    assert forwards == [(3, "stable")]


# (d) final-round scrub


SHIFTED = A[:5] + A[6:] + [MASK]


def final_round_script(blk: list[int], b: int) -> list[Spec]:
    if blk == A:
        return own(blk, c5={DEL: 0.99})
    if blk == SHIFTED:
        return own(blk, c31={SPL: 0.9, 3: 0.05}, c7={DEL: 0.8, 44: 0.1},
                   c9={SPL: 0.8, blk[9]: 0.1})
    return own(blk)


def test_final_round_scrubs_delete_and_split() -> None:
    shifted = SHIFTED
    out, forwards, trace, _ = decode(final_round_script, max_post_steps=2)
    it = iterations(trace)
    final = it[2]
    assert final["final"] and not final["closing"] and final["post"] == 2
    assert final["m2t"] == [31] and final["t2t"] == [7, 9]
    assert final["scrubbed"] == {7: 44, 9: None, 31: 3}  # 9: the scrub gives its own id back
    assert final["writes"] == {7: 44, 31: 3}
    expect = list(shifted)
    expect[7], expect[31] = 44, 3
    assert out == expect
    assert forwards == [(3, "budget")] and trace[-1] == {"block": 1, "step": 3, "post": 3,
                                                         "end": "budget"}


# (e) anti-loop


def states(**kw: int) -> tuple[int, ...]:
    """A with cells overridden ("c6"=45)."""
    s = list(A)
    for k, t in kw.items():
        s[int(k[1:])] = t
    return tuple(s)


def table(rules: dict[tuple[int, ...], dict[str, Spec]]) -> Script:
    def script(blk: list[int], b: int) -> list[Spec]:
        out = own(blk)
        for k, spec in rules.get(tuple(blk), {}).items():
            out[int(k[1:])] = spec
        return out
    return script


def test_anti_loop_rewrites_the_least_confident_written_cell() -> None:
    S0, S1 = states(), states(c2=40, c6=41)
    out, forwards, trace, _ = decode(table({
        S0: {"c2": {40: 0.9}, "c6": {41: 0.7, 45: 0.2}},
        S1: {"c2": {12: 0.9}, "c6": {16: 0.7, 45: 0.2}}}))
    it = iterations(trace)
    assert [t["written"] for t in it[:2]] == [list(S0), list(S1)]
    assert it[2]["anti_loop"] == [(6, 45)] and it[2]["writes"] == {2: 12, 6: 45}
    assert out == list(states(c6=45)) and forwards == [(4, "stable")]


def test_anti_loop_tries_the_next_cell_when_the_first_try_was_seen() -> None:
    S0, S1, S2 = states(), states(c2=40, c6=41), states(c6=45)
    out, forwards, trace, _ = decode(table({
        S0: {"c6": {45: 0.9}},
        S2: {"c2": {40: 0.9}, "c6": {41: 0.7}},
        S1: {"c2": {12: 0.9, 46: 0.05}, "c6": {16: 0.7, 45: 0.2}}}))
    it = iterations(trace)
    assert [tuple(t["written"]) for t in it[:3]] == [S0, S2, S1]
    assert it[3]["anti_loop"] == [(6, 45), (2, 46)] and it[3]["writes"] == {2: 46, 6: 16}
    assert out == list(states(c2=46)) and forwards == [(5, "stable")]


def test_anti_loop_keeps_the_last_try_when_all_fail() -> None:
    S0, S2 = states(), states(c6=45)
    out, forwards, trace, _ = decode(table({S0: {"c6": {45: 0.9}},
                                            S2: {"c6": {16: 0.9, 45: 0.05}}}))
    it = iterations(trace)
    assert it[2]["anti_loop"] == [(6, 45)] and tuple(it[2]["written"]) == S2
    # the kept try reproduces the block at the top: a stable end
    assert out == list(S2) and forwards == [(3, "stable")]


def test_anti_loop_tries_at_most_five_cells() -> None:
    S0 = states()
    U = {i: states(**{f"c{i}": 60 + i}) for i in range(7)}  # one cell off A
    S1 = states(**{f"c{i}": 60 + i for i in range(7)})
    rules: dict[tuple[int, ...], dict[str, Spec]] = {S0: {"c6": {66: 0.9}}}
    for i in range(6, 2, -1):  # U6 → U5 → U4 → U3 → U2, each written (and recorded) once
        rules[U[i]] = {f"c{i}": {A[i]: 0.9}, f"c{i - 1}": {60 + i - 1: 0.9}}
    rules[U[2]] = {f"c{i}": {60 + i: 0.9} for i in range(7)}  # → S1
    # S1 → S0 (seen); cell i's alternative 60 + i gives U_i (seen): cells 6, 5, 4, 3, 2 in
    # ascending p are tried, all fail, and the last try (U2) is kept
    rules[S1] = {f"c{i}": {A[i]: 0.9 - 0.01 * i, 60 + i: 0.05} for i in range(7)}
    out, forwards, trace, _ = decode(table(rules))
    it = iterations(trace)
    assert [tuple(t["written"]) for t in it[:7]] == [S0, U[6], U[5], U[4], U[3], U[2], S1]
    assert it[7]["anti_loop"] == [(i, 60 + i) for i in (6, 5, 4, 3, 2)]
    assert tuple(it[7]["written"]) == tuple(it[7]["block_ids"]) == U[2]
    assert it[7]["end"] is None and forwards[0][0] <= B + 16 + 2


# (f) the iteration cap


def endless_script(blk: list[int], b: int) -> list[Spec]:
    out = own(blk, lambda i: {20 + i: 0.99})
    if blk[0] == MASK:
        out[0] = {DEL: 0.99, 5: 0.005}
    if blk[1] == MASK:
        out[1] = {SPL: 0.99, 6: 0.005}
    out[31] = {51: 0.99} if blk[31] == MASK else {(blk[31] + 1) % 64: 0.99}
    return out


def test_an_endlessly_editing_block_stops_at_cap() -> None:
    post = 4
    cap = B + post + 2
    out, forwards, trace, model = decode(endless_script, max_post_steps=post)
    it = iterations(trace)
    # [DEL, SPLIT] over [new mask, original mask] keeps an original mask: post never counts
    assert all(t["o"] == 1 and t["post"] == 0 for t in it[1:])
    assert not any(t["anti_loop"] for t in it) and not any(t["final"] for t in it[:-1])
    assert it[-1]["closing"] and it[-1]["step"] == cap - 1 and it[-1]["t2t"] == []
    assert it[-1]["scrubbed"] == {0: 5, 1: 6}
    assert forwards == [(cap, "budget")] and model.calls == cap
    assert trace[-1] == {"block": 1, "step": cap, "post": 1, "end": "budget"}
    assert out[:2] == [5, 6] and out[2:31] == [20 + i for i in range(2, 31)]


# (g) prompt cells


def test_prompt_cells_are_never_moved_or_written() -> None:
    prompt = [1] * 32 + [2, 3, 4, DEL, SPL, MASK, 5, 6]  # P = 40: 8 prompt cells in block 1

    def script(blk: list[int], b: int) -> list[Spec]:
        out = own(blk)
        for i in range(8):  # the model wants to edit every prompt cell
            out[i] = {DEL: 0.99} if i % 2 else {SPL: 0.99}
        if blk[8:] == A[8:]:
            out[10] = {DEL: 0.99}
        elif blk[8:] == A[8:10] + A[11:] + [MASK]:
            out[31] = {9: 0.9}
        return out

    out, forwards, trace, _ = decode(script, prompt, gen_length=24)
    for t in iterations(trace):
        assert t["top"][:8] == t["block_ids"][:8] == prompt[32:]
        assert all(i >= 8 for i in t["writes"]) and all(i >= 8 for i in t["M"])
        assert not any(t["orig"][:8])
    assert out == A[8:10] + A[11:] + [9]
    assert forwards == [(4, "stable")]


# (h) end kinds


def test_end_kinds_per_block() -> None:
    def script(blk: list[int], b: int) -> list[Spec]:
        out = own(blk, lambda i: {30 + i + b: 0.99})
        if b == 2 and blk[31] != MASK:  # block 2 rewrites its last cell forever
            out[31] = {(blk[31] + 1) % 64: 0.99}
        return out

    out, forwards, trace, _ = decode(script, gen_length=96, max_post_steps=3)
    # block 1 settles (1 fill + 1 confirmation); block 2 runs 1 fill + 3 post-steps, the last
    # a final round, then ends on the budget without a forward; block 3 settles
    assert forwards == [(2, "stable"), (4, "budget"), (2, "stable")]
    assert out[63] == (30 + 31 + 2 + 3) % 64
    out, forwards, _, _ = decode(script, gen_length=96, max_post_steps=0)
    assert forwards == [(1, "budget")] * 3


def test_eos_ends_only_in_a_completed_block() -> None:
    def script(blk: list[int], b: int) -> list[Spec]:
        if blk == INIT:
            return own(blk, c3={EOS: 0.99}, c4={EOS2: 0.99} if b == 2 else {A[4]: 0.99})
        if b == 1 and blk[3] == EOS:
            return own(blk, c3={7: 0.9})  # the transient EOS is edited away
        return own(blk)

    out, forwards, _, _ = decode(script, gen_length=96)
    assert out == A[:3] + [7] + A[4:] + A[:3] + [EOS]
    assert len(forwards) == 2  # block 3 is never decoded


# (i) editing off


def test_editing_off_never_writes_edit_ids() -> None:
    def script(blk: list[int], b: int) -> list[Spec]:
        return [{DEL: 0.6, SPL: 0.05, (A[i] if t == MASK else t): 0.3}
                for i, t in enumerate(blk)]

    out, forwards, trace, model = decode(script, threshold=0.8, editing_threshold=None)
    assert out == A and forwards == [(1, "filled")] and trace == []
    # the same as the 2.0 reference on a model whose DELETE/SPLIT logits are −inf
    # (p = 0.3 / 0.35 > 0.8 once they are excluded)

    class NoEdits(Scripted):
        def forward(self, ids: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
            logits = super().forward(ids, visible)
            logits[:, [DEL, SPL]] = -torch.inf
            return logits

    no_edits = cast(ReferenceModel, NoEdits(script))
    assert out == reference_generate(no_edits, [1] * B, B, block_length=B, threshold=0.8,
                                     mask_id=MASK, eos_ids=[EOS])
    # editing on, the same model deletes
    _, _, trace, _ = decode(script, threshold=0.5, editing_threshold=0.5, max_post_steps=3)
    assert any(DEL in t["writes"].values() for t in iterations(trace))


# smoke: the real reference model on the tiny peaky LLaDA2.2 checkpoint


def test_tiny_llada22_peaky_smoke(tiny_llada22_peaky: Path) -> None:
    from server.model.specials import read_special_ids
    from tests.reference.model import load_reference

    ids = read_special_ids(tiny_llada22_peaky)
    assert ids.mask_id is not None and ids.delete_id is not None and ids.split_id is not None
    tok = json.loads((tiny_llada22_peaky / "tokenizer.json").read_text())
    special = {t["id"] for t in tok["added_tokens"]}
    pool = [i for i in range(len(tok["model"]["vocab"])) if i not in special]
    g = torch.Generator().manual_seed(7)
    prompt = [pool[i] for i in torch.randint(0, len(pool), (45,), generator=g).tolist()]
    model = load_reference(tiny_llada22_peaky)
    forwards: list[tuple[int, str]] = []
    trace: list[dict] = []
    with torch.inference_mode():
        out = reference_generate_levenshtein(
            model, prompt, 50, threshold=0.5, editing_threshold=0.0, max_post_steps=4,
            mask_id=ids.mask_id, delete_id=ids.delete_id, split_id=ids.split_id,
            eos_ids=ids.eos_ids, forwards=forwards, trace=trace)
    cap = 32 + 4 + 2
    assert forwards and all(n <= cap for n, _ in forwards)
    assert not {ids.mask_id, ids.delete_id, ids.split_id} & set(out)
    written = [t for it in iterations(trace) for t in it["written"]]
    edits = {"delete": written.count(ids.delete_id), "split": written.count(ids.split_id)}
    print("tiny_llada22_peaky:", forwards, edits)
    assert edits["delete"] + edits["split"] > 0  # the peaky keys make the edit ids win
