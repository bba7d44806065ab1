"""Page pool states, LRU eviction, and the KV manager's prefix matching and sealing."""

from __future__ import annotations

from server.core import GenerateRequest, SamplingParams, Sequence
from server.kv_cache.manager import KVManager, chain_hash
from server.kv_cache.page_pool import PagePool

PS = 4


def seq_of(ids: list[int], rid: str = "r") -> Sequence:
    req = GenerateRequest(rid, tuple(ids), SamplingParams())
    return Sequence(req=req, tokens=list(ids), block=None, block_start=len(ids))


def test_pool_states_and_lru_eviction() -> None:
    pool = PagePool(3)
    a, b, c = pool.allocate(3)
    assert pool.allocate(1) is None and pool.num_used == 3
    assert pool.seal(a, b"A") and pool.seal(b, b"B")
    assert not pool.seal(c, b"A")  # same content already cached: c stays private
    pool.release([b]), pool.release([a]), pool.release([c])
    assert pool.num_free == 1 and pool.num_cached == 2 and pool.num_used == 0
    assert pool.lookup(b"A") == a
    pool.acquire(a)  # a hit leaves the LRU while referenced
    assert pool.num_cached == 1
    got = pool.allocate(2)  # the free page, then the oldest cached page (b) is evicted
    assert got is not None and set(got) == {c, b}
    assert pool.lookup(b"B") is None and pool.lookup(b"A") == a
    assert pool.allocate(1) is None  # a is referenced: never evicted


def test_admit_matches_prefix_then_allocates() -> None:
    kv = KVManager(PagePool(16), PS)
    s1 = seq_of(list(range(10)), "s1")
    assert kv.admit(s1, num_final=9, end=10) == 0
    assert len(s1.page_table) == 3
    s1.num_cached = 9
    kv.seal(s1)  # pages 0 and 1 are full and final; page 2 is not
    assert s1.num_sealed_pages == 2
    assert s1.last_hash == chain_hash(chain_hash(None, [0, 1, 2, 3]), [4, 5, 6, 7])
    kv.free(s1)
    assert kv.pool.num_used == 0 and kv.pool.num_cached == 2

    s2 = seq_of(list(range(8)) + [99, 98, 97], "s2")
    assert kv.admit(s2, num_final=10, end=11) == 8  # two pages hit
    assert s2.num_cached == 8 and s2.num_sealed_pages == 2
    s3 = seq_of([0, 1, 2, 3, 7, 7, 7, 7, 7], "s3")
    assert kv.admit(s3, num_final=8, end=9) == 4  # the chain breaks at page 1
    assert s3.page_table[0] == s2.page_table[0] and kv.pool.ref_count(s2.page_table[0]) == 2


def test_admit_respects_reserve_and_grow_fails_cleanly() -> None:
    kv = KVManager(PagePool(4), PS)
    s = seq_of(list(range(12)), "a")
    assert kv.admit(s, 11, 12, reserve=2) is None and not s.page_table
    assert kv.admit(s, 11, 12, reserve=1) == 0
    assert kv.grow(s, 16) and len(s.page_table) == 4
    assert not kv.grow(s, 17) and len(s.page_table) == 4
    kv.free(s)
    assert kv.pool.num_free == 4
