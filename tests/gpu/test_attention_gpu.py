"""flashinfer paged attention vs the torch (SDPA) backend on CUDA: denoise blocks, block-causal
prefill chunks and causal (AR) forwards over scattered pages."""

from __future__ import annotations

import pytest
import torch

from server.kv_cache.tensors import KVCache
from server.runner.attention import TorchAttention, create_backend
from server.runner.forward_batch import ForwardBatch

pytestmark = pytest.mark.gpu


def _batch(spans: list[tuple[int, int]], ps: int, blk: int, pages: int,
           g: torch.Generator) -> ForwardBatch:
    """spans: (q_start, kv_len) per segment; pages drawn at random without reuse."""
    perm = torch.randperm(pages, generator=g).tolist()
    tables, ids, pos, slots, indptr = [], [], [], [], [0]
    for qs, kl in spans:
        n = -(-kl // ps)
        table = [perm.pop() for _ in range(n)]
        tables.append(table)
        for p in range(qs, kl):
            pos.append(p)
            slots.append(table[p // ps] * ps + p % ps)
        ids.extend([0] * (kl - qs))
        indptr.append(len(ids))
    width = max(len(t) for t in tables)
    pt = torch.tensor([t + [0] * (width - len(t)) for t in tables])
    dev = torch.device("cuda")
    return ForwardBatch(
        torch.tensor(ids, device=dev), torch.tensor(pos, device=dev),
        torch.tensor(slots, device=dev), torch.tensor(indptr),
        torch.tensor([s[0] for s in spans]), torch.tensor([s[1] for s in spans]),
        pt.to(dev), torch.arange(len(ids), device=dev), blk, ps)


@pytest.mark.parametrize(("spans", "blk"), [
    ([(64, 96), (0, 32), (320, 352)], 32),  # denoise steps: one block after committed pages
    ([(0, 96), (32, 160)], 32),  # prefill chunks spanning blocks: block-causal mask
    ([(0, 40), (70, 71)], 1),  # AR: causal prefill and a decode row
])
def test_flashinfer_matches_torch(spans: list[tuple[int, int]], blk: int) -> None:
    pytest.importorskip("flashinfer")
    g = torch.Generator().manual_seed(0)
    ps, pages, nh, nkv, hd = 32, 64, 16, 4, 128
    fb = _batch(spans, ps, blk, pages, g)
    outs = []
    for backend in (TorchAttention(), create_backend("flashinfer", torch.device("cuda"))):
        kv = KVCache(1, pages, ps, nkv, hd, torch.bfloat16, torch.device("cuda"))
        torch.manual_seed(1)
        kv.k.normal_()
        kv.v.normal_()
        T = fb.num_tokens
        q = torch.randn(T, nh, hd, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(T, nkv, hd, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(T, nkv, hd, device="cuda", dtype=torch.bfloat16)
        outs.append(backend.forward(0, q, k, v, kv, fb, backend.prepare(fb)).float())
    torch.testing.assert_close(outs[1], outs[0], rtol=2e-2, atol=2e-2)
