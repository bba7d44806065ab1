"""`CanvasTable`: the decode state of running block-diffusion sequences, resident on the device.

One row per sequence that has been given one (`Sequence.canvas_row`): its active block's ids,
where its generated part starts, its acceptance parameters and its editing counter. A step
gathers what it needs by row index (`StepRows`), the acceptance kernel rewrites the canvas rows
in place, and the post-step counter is written back on the device; the host learns the outcome
from the step's one read and mirrors it in `Sequence.block`/`post_steps`.

Invariant: for a sequence with `canvas_row_current`, its row equals its host mirror. The host
clears the flag whenever it changes the mirror itself (a new block, a grammar-constrained or
LLaDA2.2 row, a failed step); `bind` then uploads that row (one packed upload for all of them),
so a steady block costs the host no upload beyond the [S] row index."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from server.core import Sequence
from server.transfer import upload
from unmask_kernels import EditBatch

INF = float("inf")


@dataclass(frozen=True, slots=True)
class StepRows:
    """This step's view of the table, gathered by row (device tensors)."""

    rows: torch.Tensor  # [S] long: table row of each logit segment
    undecided: torch.Tensor  # [S, B] bool: masked generated positions
    threshold: torch.Tensor  # [S] fp32
    min_commit: torch.Tensor  # [S] long
    posts: torch.Tensor  # [S] long: mask-free iterations once this one is counted
    edits: EditBatch | None  # rows that edit this step (+inf threshold: they do not)


class CanvasTable:
    def __init__(self, capacity: int, block_size: int, mask_id: int,
                 device: torch.device) -> None:
        N, B = capacity, block_size
        self.block_size, self.mask_id, self.device = B, mask_id, device
        self.canvas = torch.full((N, B), mask_id, dtype=torch.long, device=device)  # [N, B]
        self.first_generated = torch.zeros(N, dtype=torch.long, device=device)  # [N]
        self.threshold = torch.zeros(N, dtype=torch.float32, device=device)  # [N]
        self.min_commit = torch.ones(N, dtype=torch.long, device=device)  # [N]
        self.edit_threshold = torch.full((N,), INF, dtype=torch.float32, device=device)  # [N]
        self.max_post_steps = torch.zeros(N, dtype=torch.long, device=device)  # [N]
        self.post_steps = torch.zeros(N, dtype=torch.long, device=device)  # [N]
        self.positions = torch.arange(B, device=device)  # [B]
        self._free = list(range(N - 1, -1, -1))
        self.rows_uploaded = 0  # rows sent by `bind` since start-up (tests read it)

    def bind(self, seqs: list[Sequence], threshold: Callable[[Sequence], float]
             ) -> torch.Tensor:
        """Give every sequence a row, upload the rows that are not current; [S] row index.
        `threshold` gives a sequence's commit threshold (the mode resolves its default)."""
        stale = []
        for seq in seqs:
            if seq.canvas_row is None:
                seq.canvas_row = self._free.pop()
                seq.canvas_row_current = False
            if not seq.canvas_row_current:
                stale.append(self._pack(seq, threshold(seq)))
                seq.canvas_row_current = True
        if stale:
            self._write(upload(stale, torch.float64, self.device))
        return upload([s.canvas_row for s in seqs], torch.long, self.device)

    def _pack(self, seq: Sequence, threshold: float) -> list[float]:
        """One float64 row (ids and counters are exact in it): row, first generated position,
        threshold, min_commit, editing threshold, editing budget, post-steps, block ids.
        min_commit is capped at B and the budget at 2^52: the same rule, exact in float64."""
        assert seq.block is not None and seq.canvas_row is not None
        e = seq.editing
        return [seq.canvas_row, max(0, seq.prompt_len - seq.block_start), threshold,
                min(seq.params.min_commit, self.block_size), e.threshold if e is not None
                else INF, min(e.max_post_steps, 1 << 52) if e is not None else 0,
                seq.post_steps, *seq.block]

    def _write(self, packed: torch.Tensor) -> None:
        """packed [K, 7 + B] float64 (see `_pack`) → the K rows it names."""
        rows = packed[:, 0].long()
        self.first_generated.index_copy_(0, rows, packed[:, 1].long())
        self.threshold.index_copy_(0, rows, packed[:, 2].float())
        self.min_commit.index_copy_(0, rows, packed[:, 3].long())
        self.edit_threshold.index_copy_(0, rows, packed[:, 4].float())
        self.max_post_steps.index_copy_(0, rows, packed[:, 5].long())
        self.post_steps.index_copy_(0, rows, packed[:, 6].long())
        self.canvas.index_copy_(0, rows, packed[:, 7:].long())
        self.rows_uploaded += packed.shape[0]

    def release(self, seq: Sequence) -> None:
        """The sequence leaves the running set (finished or preempted): its row is free."""
        if seq.canvas_row is not None:
            self._free.append(seq.canvas_row)
            seq.canvas_row, seq.canvas_row_current = None, False

    def gather(self, rows: torch.Tensor, editing: bool) -> StepRows:
        """The step's inputs for rows [S]; `editing`: some row of the step edits."""
        blocks = self.canvas[rows]  # [S, B]
        generated = self.positions[None, :] >= self.first_generated[rows][:, None]  # [S, B]
        undecided = (blocks == self.mask_id) & generated
        # an iteration that starts mask-free is a post-step; past the budget a row may not
        # edit (threshold +inf), which settles its block
        posts = self.post_steps[rows] + (~undecided.any(1)).long()  # [S]
        edits = None
        if editing:
            ethr = torch.where(posts <= self.max_post_steps[rows], self.edit_threshold[rows],
                               INF)
            edits = EditBatch(ethr, generated, torch.zeros_like(undecided))
        return StepRows(rows, undecided, self.threshold[rows], self.min_commit[rows],
                        posts, edits)

    def count_posts(self, step: StepRows) -> None:
        """Keep this step's post-step count (an editing row's; harmless for the others)."""
        self.post_steps.index_copy_(0, step.rows, step.posts)
