"""Paged query-block attention: the torch reference vs naive dense attention, and the Triton
kernel (on CPU via the interpreter) vs the reference over scattered pages, GQA, Bq 1 / 4 / 32,
page sizes 1 / 16 / 32 and key lengths from 1 to past several tiles."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are first imported
pytest.importorskip("triton")

from unmask_kernels.attention.ref import paged_block_attention_ref  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _case(seed: int, kv_len: list[int], Bq: int, H: int, KVH: int, D: int, ps: int,
          dtype: torch.dtype = torch.float32, index_dtype: torch.dtype = torch.int32
          ) -> tuple[torch.Tensor, ...]:
    """q, k_cache, v_cache, page_table, kv_len. Each block gets its own pages, drawn at random
    from a shared pool; cache slots no block reads hold NaN and table entries past a block's
    last page hold -1, so reading either shows up."""
    g = torch.Generator().manual_seed(seed)
    N = len(kv_len)
    need = [-(-n // ps) for n in kv_len]
    max_pages = max(need) + 1
    num_pages = sum(need) + 3
    perm = torch.randperm(num_pages, generator=g)
    table = torch.full((N, max_pages), -1, dtype=torch.long)
    k = torch.full((num_pages * ps, KVH, D), torch.nan)
    v = torch.full((num_pages * ps, KVH, D), torch.nan)
    used = 0
    for i, (n, p) in enumerate(zip(kv_len, need, strict=True)):
        table[i, :p] = perm[used : used + p]
        used += p
        pos = torch.arange(n)
        slots = table[i, pos // ps] * ps + pos % ps
        k[slots] = torch.randn(n, KVH, D, generator=g)
        v[slots] = torch.randn(n, KVH, D, generator=g)
    q = torch.randn(N * Bq, H, D, generator=g) * 1.5  # some peaky rows
    lens = torch.tensor(kv_len, dtype=index_dtype)
    return (q.to(dtype).to(DEV), k.to(dtype).to(DEV), v.to(dtype).to(DEV),
            table.to(index_dtype).to(DEV), lens.to(DEV))


def _naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
           kv_len: torch.Tensor, ps: int, scale: float) -> torch.Tensor:
    """Row by row, head by head, in float64, keys gathered one position at a time."""
    T, H, D = q.shape
    N = table.shape[0]
    Bq, G = T // N, H // k.shape[1]
    out = torch.zeros(T, H, D, dtype=torch.float64)
    for t in range(T):
        i = t // Bq
        n = int(kv_len[i])
        slots = [int(table[i, p // ps]) * ps + p % ps for p in range(n)]
        for h in range(H):
            keys = torch.stack([k[s, h // G] for s in slots]).double()  # [n, D]
            vals = torch.stack([v[s, h // G] for s in slots]).double()
            w = (keys @ q[t, h].double() * scale).softmax(0)
            out[t, h] = w @ vals
    return out


@pytest.mark.parametrize(("seed", "kv_len", "Bq", "H", "KVH", "D", "ps"), [
    (0, [1, 5, 17], 1, 2, 2, 16, 1),
    (1, [3, 40], 4, 8, 2, 16, 16),
    (2, [32, 70], 32, 4, 1, 16, 32),
    (3, [9, 1, 33], 3, 6, 3, 24, 4),
])
def test_reference_equals_naive_rows(seed: int, kv_len: list[int], Bq: int, H: int, KVH: int,
                                     D: int, ps: int) -> None:
    q, k, v, table, lens = (x.cpu() for x in _case(seed, kv_len, Bq, H, KVH, D, ps))
    want = _naive(q, k, v, table, lens, ps, D**-0.5)
    got = paged_block_attention_ref(q, k, v, table, lens, ps)
    assert not got.isnan().any()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    got = paged_block_attention_ref(q, k, v, table.long(), lens.long(), ps, scale=0.3)
    torch.testing.assert_close(got.double(), _naive(q, k, v, table, lens, ps, 0.3),
                               rtol=1e-5, atol=1e-6)


def test_reference_bq1_is_causal_and_bq_blocks_are_block_causal() -> None:
    """One sequence in consecutive pages: Bq = 1 with kv_len = position + 1 is causal
    attention; Bq = 8 with kv_len = end of the block is the block-causal mask."""
    g = torch.Generator().manual_seed(7)
    L, H, KVH, D, ps = 24, 4, 2, 16, 8
    q = torch.randn(L, H, D, generator=g)
    k = torch.randn(L, KVH, D, generator=g)
    v = torch.randn(L, KVH, D, generator=g)
    kk, vv = k.repeat_interleave(2, 1).transpose(0, 1), v.repeat_interleave(2, 1).transpose(0, 1)
    table = torch.arange(L // ps).expand(L, -1)
    got = paged_block_attention_ref(q, k, v, table, torch.arange(1, L + 1), ps)
    want = F.scaled_dot_product_attention(q.transpose(0, 1), kk, vv, is_causal=True)
    torch.testing.assert_close(got, want.transpose(0, 1), rtol=1e-5, atol=1e-5)
    blk = torch.arange(L) // 8
    mask = blk[:, None] >= blk[None, :]  # [L, L] query block ≥ key block
    ends = torch.tensor([8, 16, 24])
    got = paged_block_attention_ref(q, k, v, table[:3], ends, ps)
    want = F.scaled_dot_product_attention(q.transpose(0, 1), kk, vv, attn_mask=mask)
    torch.testing.assert_close(got, want.transpose(0, 1), rtol=1e-5, atol=1e-5)


CASES = [  # seed, kv_len, Bq, H, KVH, D, page_size, dtype
    (10, [1, 2, 37, 70], 1, 2, 2, 16, 1, torch.float32),  # decode, MHA, one-slot pages
    (11, [1, 33, 95], 1, 8, 2, 32, 16, torch.float32),  # decode, GQA 4: 4 rows packed
    (12, [32, 61], 32, 2, 2, 16, 32, torch.float32),  # diffusion blocks, MHA
    (13, [32, 100], 32, 4, 1, 16, 16, torch.float32),  # diffusion, GQA 4: 128 rows, 2 tiles
    (14, [4, 1, 50], 4, 8, 2, 32, 16, torch.float32),  # Bq 4, GQA 4
    (15, [7, 64], 4, 4, 1, 16, 32, torch.bfloat16),
    (16, [5, 47], 32, 2, 1, 32, 16, torch.float16),
    (17, [3, 26], 4, 2, 1, 24, 4, torch.float32),  # head_dim not a power of two
]


@pytest.mark.parametrize(("seed", "kv_len", "Bq", "H", "KVH", "D", "ps", "dtype"), CASES)
def test_triton_matches_reference(seed: int, kv_len: list[int], Bq: int, H: int, KVH: int,
                                  D: int, ps: int, dtype: torch.dtype) -> None:
    from unmask_kernels.attention.triton_paged import paged_block_attention

    q, k, v, table, lens = _case(seed, kv_len, Bq, H, KVH, D, ps, dtype)
    want = paged_block_attention_ref(q, k, v, table, lens, ps)
    got = paged_block_attention(q, k, v, table, lens, ps, block_n=16)  # several key tiles
    assert got.dtype == dtype and got.shape == q.shape and not got.isnan().any()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("splits", [2, 3])
def test_triton_key_splits_match_reference(splits: int) -> None:
    """Flash-decoding slices (some empty for short blocks) merged by the combine kernel."""
    from unmask_kernels.attention.triton_paged import paged_block_attention

    q, k, v, table, lens = _case(20 + splits, [1, 20, 90], 4, 8, 2, 16, 16,
                                 index_dtype=torch.int64)
    want = paged_block_attention_ref(q, k, v, table, lens, 16)
    got = paged_block_attention(q, k, v, table, lens, 16, num_splits=splits, block_n=16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_triton_strided_q_scale_and_empty_block() -> None:
    """q a column slice of a fused qkv projection; an explicit scale; a kv_len 0 pad block
    gives zeros (not NaN) in both implementations."""
    from unmask_kernels.attention import paged_block_attention as lazy
    from unmask_kernels.attention.triton_paged import paged_block_attention

    q, k, v, table, lens = _case(30, [6, 40, 1], 2, 4, 2, 16, 16)
    qkv = torch.randn(q.shape[0], 8, 16, device=DEV)
    qkv[:, 2:6] = q
    qs = qkv[:, 2:6]  # [T, 4, 16], row stride 128
    lens[2] = 0
    want = paged_block_attention_ref(qs, k, v, table, lens, 16, 0.2)
    got = paged_block_attention(qs, k, v, table, lens, 16, 0.2, num_splits=2, block_n=16)
    assert torch.equal(want[4:], torch.zeros_like(want[4:]))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lazy(qs, k, v, table, lens, 16, 0.2), want, rtol=1e-5,
                               atol=1e-5)


def test_registry_has_both_backends() -> None:
    import unmask_kernels.attention  # noqa: F401  (registers the op)
    from unmask_kernels.registry import available, resolve

    assert {"torch", "triton"} <= set(available("attention"))
    assert resolve("attention", "auto", "cpu")[0] == "torch"
    name, fn = resolve("attention", "triton", DEV)
    assert name == "triton" and fn.__module__.endswith("triton_paged")
