"""Triton grouped-GEMM experts (on CPU via the interpreter) and the torch `_grouped_mm` experts
vs the torch per-expert loop."""

from __future__ import annotations

import os
from pathlib import Path

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
        rows = [torch.randperm(E, generator=g)[:k] for _ in range(T)]
        ids = torch.stack(rows) if rows else torch.empty(0, k, dtype=torch.long)
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


_grouped_mm = pytest.mark.skipif(not hasattr(torch, "_grouped_mm"),
                                 reason="this torch has no torch._grouped_mm")


@_grouped_mm
@pytest.mark.parametrize(("seed", "T", "E", "k", "H", "inter"), [
    (10, 0, 8, 2, 64, 32),
    (11, 1, 4, 1, 64, 32),
    (12, 1, 16, 8, 32, 16),
    (13, 5, 16, 2, 64, 32),  # most experts empty
    (14, 17, 8, 8, 48, 40),  # every expert, H and I not powers of two
    (15, 33, 4, 2, 64, 24),
])
def test_torch_grouped_mm_matches_loop(seed: int, T: int, E: int, k: int, H: int,
                                       inter: int) -> None:
    from unmask_kernels.moe.grouped import experts_grouped

    x, ids, w, w13, w2 = _case(seed, T, E, k, H, inter, torch.float32)
    y = experts_grouped(x, ids, w, w13, w2)
    ref = experts_loop(x, ids, w, w13, w2)
    assert y.dtype == x.dtype and y.shape == ref.shape == (T, H)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_torch_backend_is_the_loop_off_cuda() -> None:
    """The CPU exactness suites rely on "torch" being `experts_loop` itself on CPU."""
    from unmask_kernels.registry import resolve

    assert resolve("moe", "torch", "cpu")[1] is experts_loop
    name, impl = resolve("moe", "torch", "cuda")
    assert name == "torch" and impl.__name__ == "experts_torch"


@_grouped_mm
def test_grouped_backend_gives_the_torch_tokens(tiny_llada2_peaky: Path) -> None:
    from server import LLM, SamplingParams
    from server.model.moe import Experts
    from unmask_kernels.moe.grouped import experts_grouped

    tokens = {}
    for backend, impl in (("torch", experts_loop), ("grouped", experts_grouped)):
        llm = LLM(str(tiny_llada2_peaky), device="cpu", num_pages=32, moe_backend=backend,
                  acceptance_backend="torch")
        model = llm.engine.runner.model
        assert {m.impl for m in model.modules() if isinstance(m, Experts)} == {impl}
        out = llm.generate(["Hello there"], SamplingParams(max_tokens=16, temperature=0.0))
        tokens[backend] = out[0].token_ids
    assert len(tokens["torch"]) == 16 and tokens["grouped"] == tokens["torch"]
