"""Incremental detokenization with stop strings.

Text is released only when it can no longer change: a trailing U+FFFD (an incomplete UTF-8
sequence split across tokens) is held back, and so is any tail that could still grow into a stop
string. A stop string ends the output; it and everything after it are never released.
"""

from __future__ import annotations

from typing import Protocol


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Decoder, stop: tuple[str, ...] = (),
                 skip_special_tokens: bool = True) -> None:
        self.tok = tokenizer
        self.stop = stop
        self.skip_special = skip_special_tokens
        self.ids: list[int] = []
        self.text = ""  # all text decoded so far (stable prefix of the output)
        self.released = 0  # chars of `text` already returned
        self._prefix_offset = 0  # ids[prefix:read] decode to text already in `self.text`
        self._read_offset = 0
        self.stopped: str | None = None  # the stop string that matched

    def feed(self, new_ids: list[int], final: bool = False) -> str:
        """Add ids; return the newly releasable text."""
        if self.stopped is not None:
            return ""
        self.ids.extend(new_ids)
        prefix = self.tok.decode(self.ids[self._prefix_offset : self._read_offset],
                                 skip_special_tokens=self.skip_special)
        full = self.tok.decode(self.ids[self._prefix_offset :],
                               skip_special_tokens=self.skip_special)
        if len(full) > len(prefix) and (final or not full.endswith("\ufffd")):
            self.text += full[len(prefix):]
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        return self._release(final)

    def _release(self, final: bool) -> str:
        start = max(0, self.released - max((len(s) for s in self.stop), default=0))
        hits = [(i, s) for s in self.stop if (i := self.text.find(s, start)) != -1]
        if hits:
            i, self.stopped = min(hits)
            self.text = self.text[:i]
        end = len(self.text)
        if self.stopped is None and not final:
            end -= self._held_tail()
        out = self.text[self.released : end]
        self.released = max(self.released, end)
        return out

    def _held_tail(self) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best
