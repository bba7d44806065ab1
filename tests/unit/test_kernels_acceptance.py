"""Fused Triton acceptance vs the torch reference, run by the Triton interpreter on CPU."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are first imported
pytest.importorskip("triton")

from unmask_kernels.acceptance.ref import SamplingBatch, accept_blocks  # noqa: E402

MASK = 3


def _case(seed: int, S: int, B: int, V: int, dtype: torch.dtype
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(S, 1, 1, generator=g) * 12 + 0.5  # flat to peaky rows
    logits = (torch.randn(S, B, V, generator=g) * scale).to(dtype)
    logits[0, 0, MASK] = 100.0  # the mask id is never a candidate
    ids = torch.randint(4, V, (S, B), generator=g)
    undecided = torch.rand(S, B, generator=g) < 0.7
    undecided[-1] = False  # a finished block: nothing changes
    ids[undecided] = MASK
    thr = torch.rand(S, generator=g).clamp(0.05, 0.99)
    k = torch.randint(1, 4, (S,), generator=g)
    return logits, ids, undecided, thr, k


@pytest.mark.parametrize(("seed", "S", "B", "V", "splits", "dtype"), [
    (0, 1, 8, 97, 1, torch.float32),
    (1, 3, 8, 300, 2, torch.float32),
    (2, 4, 32, 257, 3, torch.float32),
    (3, 2, 5, 130, 1, torch.bfloat16),
    (4, 3, 16, 1000, 4, torch.bfloat16),
])
def test_greedy_equals_reference(seed: int, S: int, B: int, V: int, splits: int,
                                 dtype: torch.dtype) -> None:
    from unmask_kernels.acceptance.triton_accept import fused_accept

    logits, ids, undecided, thr, k = _case(seed, S, B, V, dtype)
    ref_logits = logits.float()
    ref_block = ids.clone()
    ref_committed = accept_blocks(ref_logits.clone(), ref_block, undecided, thr, k, MASK)
    block = ids.clone()
    before = logits.clone()
    out = fused_accept(logits, block, undecided, thr, k, MASK, num_splits=splits, block_v=64)
    assert torch.equal(block, ref_block)  # ids exactly
    assert torch.equal(out.committed, ref_committed)
    assert torch.equal(out.counts.long(), ref_committed.sum(1))
    assert torch.equal(out.done, (undecided & ~ref_committed).sum(1) == 0)
    assert torch.equal(logits, before)  # logits are read only
    masked = ref_logits.clone()
    masked[..., MASK] = -torch.inf
    conf = masked.softmax(-1).amax(-1)  # [S, B]
    torch.testing.assert_close(out.confidence[undecided], conf[undecided], rtol=1e-5,
                               atol=1e-6)
    assert torch.equal(out.tokens[undecided].long(), masked.argmax(-1)[undecided])
    assert (out.counts[:-1] >= 1).all() and out.counts[-1] == 0


def test_sampled_rows_follow_the_torch_sampler() -> None:
    """Sampled rows draw from their own generator exactly as the reference does."""
    from unmask_kernels.acceptance.triton_accept import fused_accept

    logits, ids, undecided, thr, k = _case(7, 3, 8, 200, torch.float32)

    def sampling() -> SamplingBatch:
        return SamplingBatch([0.0, 0.8, 1.3], [0, 20, 0], [1.0, 1.0, 0.9],
                             [None, torch.Generator().manual_seed(5),
                              torch.Generator().manual_seed(6)])

    ref_block = ids.clone()
    accept_blocks(logits.clone(), ref_block, undecided, thr, k, MASK, sampling())
    block = ids.clone()
    fused_accept(logits, block, undecided, thr, k, MASK, sampling(), num_splits=2,
                 block_v=64)
    assert torch.equal(block, ref_block)


def test_registry_picks_once_and_rejects_unknown() -> None:
    from unmask_kernels.registry import available, resolve

    assert {"torch", "triton"} <= set(available("acceptance"))
    assert resolve("acceptance", "auto", "cpu")[0] == "torch"  # auto never picks the interpreter
    name, fn = resolve("acceptance", "triton", "cpu")
    assert name == "triton" and fn.__module__.endswith("triton_accept")
    with pytest.raises(ValueError, match="unknown acceptance backend"):
        resolve("acceptance", "cutlass", "cpu")


@pytest.mark.parametrize(("seed", "S", "B", "V", "dtype"), [
    (10, 4, 8, 300, torch.float32), (11, 6, 32, 257, torch.float32),
    (12, 3, 16, 1000, torch.bfloat16)])
def test_edits_in_a_mixed_batch_equal_reference(seed: int, S: int, B: int, V: int,
                                                dtype: torch.dtype) -> None:
    """LLaDA2.0 rows (editing off: +inf) and LLaDA2.1 rows (thresholds 0.0 and 0.5) in one
    call: ids, M2T set and edit set equal the torch reference."""
    from unmask_kernels.acceptance.ref import EditBatch
    from unmask_kernels.acceptance.triton_accept import fused_accept

    logits, ids, undecided, thr, k = _case(seed, S, B, V, dtype)
    g = torch.Generator().manual_seed(seed + 100)
    # some decided positions already hold the argmax (no edit), the rest something else
    argmax = logits.float().masked_fill(torch.arange(V) == MASK, -torch.inf).argmax(-1)
    keep = torch.rand(S, B, generator=g) < 0.3
    ids = torch.where(~undecided & keep, argmax, ids)
    editable = ~undecided & (torch.rand(S, B, generator=g) < 0.9)  # some are prompt positions
    ethr = torch.tensor([float("inf"), 0.0, 0.5] * S)[:S]

    def edits() -> EditBatch:
        return EditBatch(ethr, editable, torch.zeros(S, B, dtype=torch.bool))

    ref_block, ref_edits = ids.clone(), edits()
    ref_committed = accept_blocks(logits.float(), ref_block, undecided, thr, k, MASK,
                                  edits=ref_edits)
    block, out_edits = ids.clone(), edits()
    out = fused_accept(logits, block, undecided, thr, k, MASK, num_splits=2, block_v=64,
                       edits=out_edits)
    assert torch.equal(block, ref_block)
    assert torch.equal(out.committed, ref_committed)
    assert torch.equal(out_edits.edited, ref_edits.edited)
    assert ref_edits.edited[1:].any(), "the case must exercise edits"
    assert not ref_edits.edited[0].any() and not (ref_edits.edited & ~editable).any()


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_rows_of_a_table_are_rewritten_in_place(impl: str) -> None:
    """With `rows`, block s is row rows[s] of a [N, B] table (the engine's device-resident
    canvases): those rows end exactly as a plain call leaves its [S, B] blocks, the others are
    untouched; editing rows included."""
    from unmask_kernels.acceptance.ref import EditBatch
    from unmask_kernels.acceptance.triton_accept import accept_blocks as fused

    S, B, V, N = 5, 16, 300, 9
    logits, ids, undecided, thr, k = _case(21, S, B, V, torch.float32)
    g = torch.Generator().manual_seed(22)
    table = torch.randint(4, V, (N, B), generator=g)
    rows = torch.tensor([7, 0, 4, 2, 8])
    table[rows] = ids
    ethr = torch.tensor([float("inf"), 0.0, 0.5, 0.2, float("inf")])

    def edits() -> EditBatch:
        return EditBatch(ethr, ~undecided, torch.zeros(S, B, dtype=torch.bool))

    ref_block, ref_edits = ids.clone(), edits()
    ref_committed = accept_blocks(logits.clone(), ref_block, undecided, thr, k, MASK,
                                  edits=ref_edits)
    fn = accept_blocks if impl == "torch" else fused
    got_table, got_edits = table.clone(), edits()
    committed = fn(logits.clone(), got_table, undecided, thr, k, MASK, edits=got_edits,
                   rows=rows)
    assert torch.equal(committed, ref_committed)
    assert torch.equal(got_edits.edited, ref_edits.edited)
    assert torch.equal(got_table[rows], ref_block)
    others = torch.ones(N, dtype=torch.bool)
    others[rows] = False
    assert torch.equal(got_table[others], table[others])
    assert ref_committed.any() and ref_edits.edited.any(), "the case must commit and edit"
