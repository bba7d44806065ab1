"""Decoding modes: how a sequence's canvas is laid out, what each step forwards, and how logits
turn into committed tokens. The interface here; `BlockDiffusion` (LLaDA2) in
`server.decoding.diffusion`, `Autoregressive` (Ling-2.0) in `server.decoding.autoregressive`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from server.core import CanvasFrame, GenerateRequest, Logits, Segment, Sequence

# The host side of a step's acceptance, run once the step's read has landed: it updates the
# sequences' host state and returns the tokens committed per logit segment. Until it runs the
# device work may still be in flight (the engine emits the previous step's outputs meanwhile).
Finish = Callable[[], list[int]]


class DecodeMode(Protocol):
    attn_block: int  # block-causal mask granularity (1 = causal)
    page_size: int

    def new_sequence(self, req: GenerateRequest) -> Sequence: ...

    def num_final(self, seq: Sequence) -> int:
        """Leading positions whose ids are final and whose KV may come from the prefix cache."""
        ...

    def segment(self, seq: Sequence) -> Segment:
        """Everything this sequence still needs forwarded, from `num_cached` on."""
        ...

    def accept(self, segments: list[Segment], logits: Logits) -> Finish:
        """Queue acceptance of `logits` (rows in segment order); the returned `Finish` gives
        the tokens committed each. `GreedyRows` only where `greedy_suffices` said so."""
        ...

    def greedy_suffices(self, segments: list[Segment]) -> bool:
        """True when accepting these segments needs only each row's `GreedyRows`."""
        ...

    def output_ids(self, seq: Sequence) -> list[int]:
        """The contiguous committed output: ids at positions >= prompt length, up to the first
        undecided one."""
        ...

    def advance(self, seq: Sequence) -> bool:
        """Called after a step when the sequence goes on; True if a block was completed."""
        ...

    def release(self, seq: Sequence) -> None:
        """The sequence leaves the running set (finished or preempted)."""
        ...

    def frame(self, seq: Sequence) -> CanvasFrame | None:
        """The active block after this step, for `params.canvas` (before `advance`; its
        `block_done` is False); None where there is no block (AR)."""
        ...
