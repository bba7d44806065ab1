"""Sequence ↔ pages: admission with prefix-cache matching, growth, sealing committed pages under
a hash chain over token ids, and freeing.

Page i of a sequence holds positions [i*P, (i+1)*P). Only pages whose every position holds a
final token *and* whose KV was computed from those final tokens are sealed:

    h_i = blake2b(h_{i-1} || token ids of page i)        h_{-1} = b""
"""

from __future__ import annotations

import hashlib
from array import array

from server.core import Sequence
from server.kv_cache.page_pool import PagePool


def chain_hash(parent: bytes | None, ids: list[int]) -> bytes:
    h = hashlib.blake2b(parent or b"", digest_size=16)
    h.update(array("q", ids).tobytes())
    return h.digest()


class KVManager:
    def __init__(self, pool: PagePool, page_size: int, prefix_caching: bool = True) -> None:
        self.pool = pool
        self.page_size = page_size
        self.prefix_caching = prefix_caching

    def pages_for(self, end: int) -> int:
        return (end + self.page_size - 1) // self.page_size

    def admit(self, seq: Sequence, num_final: int, end: int, reserve: int = 0) -> int | None:
        """Give a page-less sequence pages for positions [0, end), reusing cached pages for the
        leading full pages of its first `num_final` (final, hashable) tokens. Needs `reserve`
        extra pages to stay available. Returns the number of positions served from the cache,
        or None (nothing changed) if the pool is too small right now."""
        assert not seq.page_table
        hits: list[int] = []
        keys: list[bytes] = []
        parent: bytes | None = None
        if self.prefix_caching:
            for i in range(num_final // self.page_size):
                parent = chain_hash(parent, seq.ids(i * self.page_size, (i + 1) * self.page_size))
                page = self.pool.lookup(parent)
                if page is None:
                    break
                hits.append(page)
                keys.append(parent)
        need = self.pages_for(end) - len(hits)
        cached_hits = sum(1 for p in hits if self.pool.ref_count(p) == 0)
        if self.pool.num_available - cached_hits < need + reserve:
            return None
        for page in hits:  # take references before allocating, so eviction cannot take them
            self.pool.acquire(page)
        fresh = self.pool.allocate(need)
        assert fresh is not None
        seq.page_table = hits + fresh
        seq.num_sealed_pages = len(hits)
        seq.last_hash = keys[-1] if keys else None
        seq.num_cached = len(hits) * self.page_size
        return seq.num_cached

    def grow(self, seq: Sequence, end: int) -> bool:
        """Ensure pages cover positions [0, end). False (nothing changed) if the pool is dry."""
        need = self.pages_for(end) - len(seq.page_table)
        if need <= 0:
            return True
        fresh = self.pool.allocate(need)
        if fresh is None:
            return False
        seq.page_table.extend(fresh)
        return True

    def seal(self, seq: Sequence) -> None:
        """Seal every full page below `seq.num_cached` not sealed yet (their KV is final)."""
        for i in range(seq.num_sealed_pages, seq.num_cached // self.page_size):
            seq.last_hash = chain_hash(
                seq.last_hash, seq.ids(i * self.page_size, (i + 1) * self.page_size)
            )
            if self.prefix_caching:
                self.pool.seal(seq.page_table[i], seq.last_hash)
            seq.num_sealed_pages = i + 1

    def free(self, seq: Sequence) -> None:
        self.pool.release(seq.page_table)
        seq.page_table = []
        seq.num_sealed_pages = 0
        seq.last_hash = None
        seq.num_cached = 0
