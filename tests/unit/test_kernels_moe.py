"""Triton grouped-GEMM experts vs the torch per-expert loop, on CPU via the interpreter."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from unmask_kernels.moe.ref import experts_loop  # noqa: E402


def _case(seed: int, T: int, E: int, k: int, H: int, inter: int, dtype: torch.dtype,
          skew: bool = False) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g).to(dtype)
    if skew:  # most tokens on expert 0: one long run plus stragglers
        ids = torch.stack([torch.cat([torch.tensor([0]), torch.randperm(E - 1, generator=g)[
            : k - 1] + 1]) for _ in range(T)])
    else:
        ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)])
    w = torch.rand(T, k, generator=g)
    w13 = (torch.randn(E, 2 * inter, H, generator=g) * H ** -0.5).to(dtype)
    w2 = (torch.randn(E, H, inter, generator=g) * inter ** -0.5).to(dtype)
    return x, ids, w, w13, w2


@pytest.mark.parametrize(("seed", "T", "E", "k", "H", "inter", "dtype", "skew"), [
    (0, 1, 8, 2, 64, 32, torch.float32, False),
    (1, 9, 8, 2, 64, 32, torch.float32, False),
    (2, 33, 16, 4, 48, 40, torch.float32, True),  # ragged H and I, one hot expert
    (3, 7, 8, 2, 64, 32, torch.bfloat16, False),
])
def test_grouped_gemm_matches_loop(seed: int, T: int, E: int, k: int, H: int, inter: int,
                                   dtype: torch.dtype, skew: bool) -> None:
    from unmask_kernels.moe.triton_moe import grouped_experts

    x, ids, w, w13, w2 = _case(seed, T, E, k, H, inter, dtype, skew)
    y = grouped_experts(x, ids, w, w13, w2, bm=16, bn=32, bk=32)
    ref = experts_loop(x, ids, w, w13, w2)
    assert y.dtype == x.dtype and y.shape == ref.shape
    if dtype == torch.float32:
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    else:  # bf16: rounding of the intermediate may differ by an ulp
        torch.testing.assert_close(y.float(), ref.float(), rtol=0.03, atol=0.05)


def test_align_tiles_hold_one_expert() -> None:
    from unmask_kernels.moe.triton_moe import align

    ids = torch.tensor([[3, 0], [3, 1], [0, 3], [2, 3]])
    slot, tile_expert = align(ids, num_experts=5, bm=4)
    N = ids.numel()
    flat = ids.flatten()
    for t, e in enumerate(tile_expert.tolist()):
        rows = slot[t * 4 : (t + 1) * 4]
        live = rows[rows < N]
        if e < 5:
            assert (flat[live.long()] == e).all()
        else:
            assert live.numel() == 0
    assert sorted(slot[slot < N].tolist()) == list(range(N))  # each assignment exactly once
