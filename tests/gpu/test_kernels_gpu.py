"""Triton kernels vs their torch references on CUDA at LLaDA2.0-mini sizes (skipped on CPU)."""

from __future__ import annotations

import pytest
import torch

from unmask_kernels.acceptance.ref import accept_blocks
from unmask_kernels.moe.ref import experts_loop

pytestmark = pytest.mark.gpu
MASK = 156895


@pytest.mark.parametrize(("S", "seed"), [(1, 0), (8, 1), (64, 2)])
def test_acceptance_matches_reference(S: int, seed: int) -> None:
    from unmask_kernels.acceptance.triton_accept import fused_accept

    g = torch.Generator(device="cuda").manual_seed(seed)
    B, V = 32, 157184
    scale = torch.rand(S, 1, 1, device="cuda", generator=g) * 30
    logits = (torch.randn(S, B, V, device="cuda", generator=g) * scale).bfloat16()
    ids = torch.randint(0, 1000, (S, B), device="cuda", generator=g)
    undecided = torch.rand(S, B, device="cuda", generator=g) < 0.8
    ids[undecided] = MASK
    thr = torch.full((S,), 0.95, device="cuda")
    k = torch.ones(S, dtype=torch.long, device="cuda")
    ref_block = ids.clone()
    ref = accept_blocks(logits.float(), ref_block, undecided, thr, k, MASK)
    block = ids.clone()
    out = fused_accept(logits, block, undecided, thr, k, MASK)
    assert torch.equal(block, ref_block) and torch.equal(out.committed, ref)
    masked = logits.float()
    masked[..., MASK] = -torch.inf
    conf = masked.softmax(-1).amax(-1)
    torch.testing.assert_close(out.confidence[undecided], conf[undecided], rtol=1e-4,
                               atol=1e-6)


@pytest.mark.parametrize("T", [1, 37, 512, 4096])
def test_moe_matches_loop_at_mini_shape(T: int) -> None:
    from unmask_kernels.moe.triton_moe import grouped_experts

    g = torch.Generator(device="cuda").manual_seed(T)
    E, k, H, inter = 256, 8, 2048, 512
    x = torch.randn(T, H, device="cuda", generator=g).bfloat16()
    ids = torch.rand(T, E, device="cuda", generator=g).topk(k, dim=-1).indices
    w = torch.rand(T, k, device="cuda", generator=g)
    w13 = (torch.randn(E, 2 * inter, H, device="cuda", generator=g) * H ** -0.5).bfloat16()
    w2 = (torch.randn(E, H, inter, device="cuda", generator=g) * inter ** -0.5).bfloat16()
    y = grouped_experts(x, ids, w, w13, w2)
    ref = experts_loop(x, ids, w, w13, w2)
    torch.testing.assert_close(y.float(), ref.float(), rtol=0.02, atol=0.03)
