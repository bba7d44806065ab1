"""Page bookkeeping (pure Python): free list, reference counts, and the prefix cache's
content-addressed sealed pages with LRU eviction. Holds ids only; the KV tensors live in the
runner's `KVCache`.

A page is in exactly one state:
    free      ref == 0, not sealed         on `_free`
    used      ref >= 1                     held by one or more sequences
    cached    ref == 0, sealed             in `_lru`, reusable by hash, evictable
"""

from __future__ import annotations

from collections import OrderedDict, deque


class PagePool:
    def __init__(self, num_pages: int) -> None:
        if num_pages < 1:
            raise ValueError("the KV pool needs at least one page")
        self.num_pages = num_pages
        self._free: deque[int] = deque(range(num_pages))
        self._ref = [0] * num_pages
        self._hash_of: dict[int, bytes] = {}  # sealed page → its hash-chain key
        self._page_of: dict[bytes, int] = {}  # hash-chain key → sealed page
        self._lru: OrderedDict[int, None] = OrderedDict()  # cached pages, oldest first

    # -- counts ---------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._lru)

    @property
    def num_available(self) -> int:
        """Pages an allocation may take: free ones plus evictable cached ones."""
        return len(self._free) + len(self._lru)

    @property
    def num_used(self) -> int:
        return self.num_pages - self.num_available

    def ref_count(self, page: int) -> int:
        return self._ref[page]

    # -- allocation -----------------------------------------------------------------------
    def allocate(self, n: int) -> list[int] | None:
        """n private pages (ref 1), evicting least-recently-used cached pages if needed;
        None (and no change) if fewer than n are available."""
        if n > self.num_available:
            return None
        pages = []
        for _ in range(n):
            if self._free:
                page = self._free.popleft()
            else:
                page, _ = self._lru.popitem(last=False)
                del self._page_of[self._hash_of.pop(page)]
            self._ref[page] = 1
            pages.append(page)
        return pages

    def acquire(self, page: int) -> None:
        """Take a reference on a sealed page found by `lookup`."""
        if self._ref[page] == 0:
            self._lru.pop(page)
        self._ref[page] += 1

    def release(self, pages: list[int]) -> None:
        for page in pages:
            assert self._ref[page] > 0, f"page {page} released more often than referenced"
            self._ref[page] -= 1
            if self._ref[page] == 0:
                if page in self._hash_of:
                    self._lru[page] = None  # most recently used last
                else:
                    self._free.append(page)

    # -- prefix cache ---------------------------------------------------------------------
    def lookup(self, key: bytes) -> int | None:
        return self._page_of.get(key)

    def seal(self, page: int, key: bytes) -> bool:
        """Make a held page reusable under `key`. False if another page already holds that
        content (this one then stays private and is freed on release)."""
        if key in self._page_of or page in self._hash_of:
            return False
        self._page_of[key] = page
        self._hash_of[page] = key
        return True

    def reset_prefix_cache(self) -> None:
        """Forget every cached page (held sealed pages stay in use, unsealed)."""
        for page in list(self._lru):
            self._free.append(page)
        self._lru.clear()
        self._page_of.clear()
        self._hash_of.clear()
