"""`StepChannel`: rank 0 → the other ranks, over a gloo group of torch.distributed. Each message
is a fixed header broadcast (int64 [HEADER]) and, for a step, one int64 payload broadcast that
packs the `ForwardBatch` tensors: plain integers on the wire, nothing unpickled. The channel's
group has its own (long) timeout; rank 0 sends a keep-alive whenever it has been silent a
second, so a waiting rank also learns early when rank 0's connection is gone.
A rank whose peer process died gets an error from gloo (connection closed) and exits."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

from server.runner.forward_batch import ForwardBatch

HEADER = 8  # [kind, T, S, table columns, R, attn_block, page_size, greedy]
STOP, STEP, KEEPALIVE = 0, 1, 2


class StepChannel:
    def __init__(self, group: Any, rank: int) -> None:
        self.group, self.rank = group, rank
        self.last_sent = time.monotonic()  # rank 0: when it last broadcast anything

    # -- rank 0 ---------------------------------------------------------------------------
    def send_step(self, fb: ForwardBatch) -> None:
        """`fb` on the CPU (as `ModelRunner` builds it when publishing)."""
        S, cols = fb.page_table.shape
        header = [STEP, fb.num_tokens, S, cols, fb.logits_indices.shape[0], fb.attn_block,
                  fb.page_size, int(fb.greedy)]
        self._bcast(torch.tensor(header, dtype=torch.long))
        self._bcast(torch.cat([fb.input_ids, fb.positions, fb.slot_mapping, fb.qo_indptr,
                               fb.q_start, fb.kv_len, fb.page_table.flatten(),
                               fb.logits_indices]))

    def send_keepalive(self) -> None:
        self._bcast(torch.tensor([KEEPALIVE] + [0] * (HEADER - 1), dtype=torch.long))

    def send_stop(self) -> None:
        self._bcast(torch.tensor([STOP] + [0] * (HEADER - 1), dtype=torch.long))

    # -- the other ranks ------------------------------------------------------------------
    def recv(self) -> ForwardBatch | None:
        """The next step's inputs (CPU); None when rank 0 says stop. Keep-alives are skipped."""
        while True:
            header = torch.empty(HEADER, dtype=torch.long)
            self._bcast(header)
            kind, T, S, cols, R, attn_block, page_size, greedy = header.tolist()
            if kind == STOP:
                return None
            if kind == STEP:
                break
            if kind != KEEPALIVE:
                raise RuntimeError(f"control channel: unknown message kind {kind}")
        sizes = [T, T, T, S + 1, S, S, S * cols, R]
        payload = torch.empty(sum(sizes), dtype=torch.long)
        self._bcast(payload)
        ids, pos, slots, indptr, q_start, kv_len, table, rows = payload.split(sizes)
        return ForwardBatch(ids, pos, slots, indptr, q_start, kv_len, table.view(S, cols), rows,
                            attn_block, page_size, bool(greedy))

    def _bcast(self, t: torch.Tensor) -> None:
        dist.broadcast(t, src=0, group=self.group)
        self.last_sent = time.monotonic()
