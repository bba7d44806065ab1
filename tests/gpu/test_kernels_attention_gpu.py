"""Triton paged query-block attention vs the torch reference on CUDA at LLaDA2.0-mini's
attention shape (16 heads, 4 kv heads, head_dim 128, page_size 32, bf16), and replayed from a
CUDA graph with new kv_len / page-table / q / cache contents (skipped on CPU)."""

from __future__ import annotations

import pytest
import torch

from unmask_kernels.attention.ref import paged_block_attention_ref

pytestmark = pytest.mark.gpu
H, KVH, D, PS = 16, 4, 128, 32
DEV = "cuda"


def _fill(g: torch.Generator, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
          table: torch.Tensor, kv_len: torch.Tensor, lens: list[int]) -> None:
    """New contents in place (shapes unchanged): random q and caches, each block's table row a
    random draw of distinct pages (blocks may share pages, as blocks of one sequence do)."""
    num_pages = k.shape[0] // PS
    q.copy_(torch.randn(q.shape, device=DEV, generator=g) * 1.5)
    k.copy_(torch.randn(k.shape, device=DEV, generator=g))
    v.copy_(torch.randn(v.shape, device=DEV, generator=g))
    rows = [torch.randperm(num_pages, device=DEV, generator=g)[: table.shape[1]]
            for _ in range(table.shape[0])]
    table.copy_(torch.stack(rows))
    kv_len.copy_(torch.tensor(lens))


def _case(seed: int, lens: list[int], Bq: int, max_pages: int, num_pages: int,
          dtype: torch.dtype = torch.bfloat16, index_dtype: torch.dtype = torch.int32
          ) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device=DEV).manual_seed(seed)
    N = len(lens)
    q = torch.empty(N * Bq, H, D, dtype=dtype, device=DEV)
    k = torch.empty(num_pages * PS, KVH, D, dtype=dtype, device=DEV)
    v = torch.empty_like(k)
    table = torch.empty(N, max_pages, dtype=index_dtype, device=DEV)
    kv_len = torch.empty(N, dtype=index_dtype, device=DEV)
    _fill(g, q, k, v, table, kv_len, lens)
    return q, k, v, table, kv_len


def _check(got: torch.Tensor, want: torch.Tensor) -> None:
    """bf16/fp16 tolerances: elementwise, and per (row, head) relative to the output's norm
    (long flat softmaxes give small outputs, where a plain atol would hide wrong keys)."""
    assert got.dtype == want.dtype and got.shape == want.shape and not got.isnan().any()
    a, b = got.float(), want.float()
    torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
    rel = (a - b).norm(dim=-1) / b.norm(dim=-1)  # [T, H]; each >= ~0.06 with random values
    assert rel.max() < 3e-2, f"worst (row, head) relative error {rel.max():.3g}"


@pytest.mark.parametrize(("seed", "Bq", "lens", "max_pages", "dtype"), [
    (0, 32, [32, 64, 1000, 2048, 4000, 96, 3500, 512], 128, torch.bfloat16),  # denoise blocks
    (1, 32, [9000, 30000], 960, torch.bfloat16),  # two long blocks: key splits
    (2, 1, [1, 2, 31, 33, 500, 1023, 4096, 2500] * 4, 128, torch.bfloat16),  # decode
    (3, 1, [16000, 7], 512, torch.bfloat16),  # one long decode row: key splits
    (4, 4, [4, 100, 777], 32, torch.float16),
])
def test_matches_reference_at_mini_shape(seed: int, Bq: int, lens: list[int], max_pages: int,
                                         dtype: torch.dtype) -> None:
    from unmask_kernels.attention.triton_paged import paged_block_attention

    q, k, v, table, kv_len = _case(seed, lens, Bq, max_pages, max_pages + 64, dtype)
    want = paged_block_attention_ref(q, k, v, table, kv_len, PS)
    _check(paged_block_attention(q, k, v, table, kv_len, PS), want)  # auto splits
    _check(paged_block_attention(q, k, v, table, kv_len, PS, num_splits=1), want)
    _check(paged_block_attention(q, k, v, table, kv_len, PS, num_splits=7), want)


@pytest.mark.parametrize(("Bq", "N", "max_pages", "index_dtype"), [
    (32, 8, 64, torch.int32), (1, 48, 64, torch.int64), (1, 2, 256, torch.int32)])
def test_cuda_graph_replay_with_new_lengths_and_tables(Bq: int, N: int, max_pages: int,
                                                       index_dtype: torch.dtype) -> None:
    """Captured once, replayed with new contents: the replay reads kv_len and the page table
    from device memory (no host value is baked in), so each replay equals the reference on
    that replay's inputs."""
    from unmask_kernels.attention.triton_paged import paged_block_attention

    g = torch.Generator().manual_seed(N)
    top = max_pages * PS
    lens0 = torch.randint(1, top + 1, (N,), generator=g).tolist()
    q, k, v, table, kv_len = _case(N, lens0, Bq, max_pages, max_pages + 32,
                                   index_dtype=index_dtype)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and warm up outside the capture
        paged_block_attention(q, k, v, table, kv_len, PS)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = paged_block_attention(q, k, v, table, kv_len, PS)
    gd = torch.Generator(device=DEV).manual_seed(N + 1)
    for r in range(4):
        lens = torch.randint(1, top + 1, (N,), generator=g).tolist()
        lens[r % N] = 1 if r % 2 else top  # the extremes: one key, every page
        _fill(gd, q, k, v, table, kv_len, lens)
        graph.replay()
        torch.cuda.synchronize()
        _check(out, paged_block_attention_ref(q, k, v, table, kv_len, PS))
