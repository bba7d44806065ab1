"""The torch acceptance reference against the rule written out literally, one block at a time."""

from __future__ import annotations

import pytest
import torch

from unmask_kernels import SamplingBatch, accept_blocks
from unmask_kernels.acceptance.ref import sample_rows

MASK = 3


def literal_rule(logits: torch.Tensor, ids: list[int], undecided: list[bool], thr: float,
                 k: int) -> list[int]:
    """One block [B, V], written as plainly as possible."""
    out = list(ids)
    probs = logits.clone()
    probs[:, MASK] = -float("inf")
    probs = probs.softmax(-1)
    conf = {i: float(probs[i].max()) for i in range(len(ids)) if undecided[i]}
    tok = {i: int(probs[i].argmax()) for i in conf}
    above = [i for i, c in conf.items() if c > thr]
    if len(above) >= min(k, len(conf)):
        chosen = above
    else:
        chosen = sorted(conf, key=lambda i: -conf[i])[: min(k, len(conf))]
    for i in chosen:
        out[i] = tok[i]
    return out


@pytest.mark.parametrize("seed", range(6))
def test_greedy_matches_literal_rule(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    S, B, V = 5, 8, 40
    scale = torch.tensor([0.5, 3.0, 8.0, 20.0, 1.0])[:, None, None]
    logits = torch.randn(S, B, V, generator=g) * scale
    ids = torch.randint(4, V, (S, B), generator=g)
    undecided = torch.rand(S, B, generator=g) < 0.7
    undecided[4] = False
    undecided[4, 2] = True  # a block with a single undecided position
    ids[undecided] = MASK
    thr = torch.tensor([0.95, 0.5, 0.95, 0.99, 0.0])
    k = torch.tensor([1, 2, 1, 3, 1])
    expect = [literal_rule(logits[s], ids[s].tolist(), undecided[s].tolist(), float(thr[s]),
                           int(k[s])) for s in range(S)]
    block = ids.clone()
    committed = accept_blocks(logits.clone(), block, undecided, thr, k, MASK)
    assert block.tolist() == expect
    assert torch.equal(committed, block != ids)
    assert (committed.sum(1) >= 1).all()  # progress in every block with an undecided position
    assert not (committed & ~undecided).any()  # decided and frozen positions never change


def test_mask_id_is_never_committed() -> None:
    logits = torch.full((1, 4, 10), -5.0)
    logits[:, :, MASK] = 50.0  # the model is sure of the mask id everywhere
    logits[:, 1, 7] = 0.0
    block = torch.full((1, 4), MASK)
    accept_blocks(logits, block, torch.ones(1, 4, dtype=torch.bool), torch.tensor([0.95]),
                  torch.tensor([1]), MASK)
    assert block[0].tolist() == [MASK, 7, MASK, MASK]  # committed one real token, not the mask


def test_sampling_is_reproducible_per_generator() -> None:
    logits = torch.randn(2, 8, 50)
    runs = []
    for _ in range(2):
        block = torch.full((2, 8), MASK)
        gens = [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)]
        sb = SamplingBatch([0.8, 1.3], [0, 10], [0.9, 1.0], gens)
        accept_blocks(logits.clone(), block, torch.ones(2, 8, dtype=torch.bool),
                      torch.tensor([0.5, 0.5]), torch.tensor([1, 1]), MASK, sb)
        runs.append(block)
    assert torch.equal(runs[0], runs[1])


def test_top_k_and_top_p_filters() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    tok, conf = sample_rows(logits, 1.0, 2, 1.0, g)
    assert set(tok.tolist()) == {0, 1}
    torch.testing.assert_close(conf[tok == 0], torch.full_like(conf[tok == 0], 0.625))
    tok, _ = sample_rows(logits, 1.0, 0, 0.7, g)  # 0.5 < 0.7 < 0.8: keep the top two
    assert set(tok.tolist()) == {0, 1}
    tok, _ = sample_rows(logits, 1.0, 0, 0.4, g)  # top-1 always kept
    assert set(tok.tolist()) == {0}
