"""`GrammarState`: one sequence's position in its grammar (an xgrammar matcher) plus a bitmask
buffer. The matcher has accepted exactly the sequence's committed output, in order."""

from __future__ import annotations

from typing import Any

import torch


class GrammarState:
    def __init__(self, compiled: Any, vocab_size: int, never: frozenset[int] = frozenset()
                 ) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.matcher = xgr.GrammarMatcher(compiled)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)  # [1, ceil(V/32)] int32, CPU
        self.never = never  # special ids no grammar accepts (checked here: xgrammar logs them)

    def accept(self, token: int) -> bool:
        """Advance over `token`; False (state unchanged) if the grammar does not allow it."""
        return token not in self.never and bool(self.matcher.accept_token(token))

    def rollback(self, n: int = 1) -> None:
        self.matcher.rollback(n)

    def masked(self, row: torch.Tensor) -> torch.Tensor:
        """row [V] → a copy with every token the grammar forbids next set to -inf."""
        out = row.clone()[None]  # [1, V]
        if self.matcher.fill_next_token_bitmask(self.bitmask):
            self._xgr.apply_token_bitmask_inplace(out, self.bitmask.to(out.device))
        return out[0]

    @property
    def terminated(self) -> bool:
        """A stop token was accepted: the output is complete."""
        return bool(self.matcher.is_terminated())
