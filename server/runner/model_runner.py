"""`ModelRunner`: owns device state (model, KV pages, attention backend); Batch → logits.
Under tensor parallelism every rank holds one, built alike by `build_runner`: rank 0's turns a
scheduler `Batch` into a `ForwardBatch` and publishes it to the other ranks; each rank then
runs the same `run(fb)`, whose collectives meet inside the model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from server.core import Batch, Logits
from server.kv_cache.tensors import KVCache
from server.model.llada2_moe import Ling2MoeForward
from server.runner.attention import AttentionBackend, AttentionContext
from server.runner.forward_batch import ForwardBatch, build_forward_batch

Publish = Callable[[ForwardBatch], None]  # rank 0 → the other ranks (a CPU ForwardBatch)


class Runner(Protocol):
    """What the engine steps: the eager `ModelRunner` or a graph wrapper around one."""

    model: Ling2MoeForward
    kv: KVCache
    backend: AttentionBackend
    uses_graphs: bool  # steps may replay CUDA graphs

    def forward(self, batch: Batch, greedy: bool = False) -> Logits: ...


class ModelRunner:
    """`never`: the token greedy acceptance never chooses (the mask id; None in AR)."""

    uses_graphs = False

    def __init__(self, model: Ling2MoeForward, kv: KVCache, backend: AttentionBackend,
                 attn_block: int, device: torch.device, publish: Publish | None = None,
                 never: int | None = None) -> None:
        self.model, self.kv, self.backend = model, kv, backend
        self.attn_block, self.device = attn_block, device
        self.publish, self.never = publish, never

    @torch.inference_mode()
    def forward(self, batch: Batch, greedy: bool = False) -> Logits:
        """One forward over every segment: logits [R, V] (model dtype) of the rows asked for,
        or, when `greedy` says the step needs no more and the vocabulary is split over ranks,
        their `GreedyRows` (gathering [R, 3] per rank instead of [R, V/N])."""
        if self.publish is None:
            return self.run(build_forward_batch(batch, self.kv.page_size, self.attn_block,
                                                self.device))
        fb = build_forward_batch(batch, self.kv.page_size, self.attn_block, torch.device("cpu"),
                                 greedy)
        self.publish(fb)
        return self.run(fb.to(self.device))

    @torch.inference_mode()
    def run(self, fb: ForwardBatch) -> Logits:
        """Every rank: K/V into this rank's pages, then the logits of `fb.logits_indices`
        (complete on rank 0 only under tensor parallelism; see `compute_logits`)."""
        return self.head(self.hidden(fb)[fb.logits_indices], fb.greedy)  # rows [R, H]

    def head(self, rows: torch.Tensor, greedy: bool) -> Logits:
        """Pre-norm rows [R, H] → logits [R, V] in the model dtype, or their `GreedyRows`."""
        if greedy:
            summary = self.model.greedy_rows(rows, self.never)
            return summary if summary is not None else rows[:0]  # ranks > 0: discarded
        return self.model.compute_logits(rows)  # [R, V]

    @torch.inference_mode()
    def hidden(self, fb: ForwardBatch) -> torch.Tensor:
        """Write this forward's K/V to its pages; pre-norm hidden states [T, H]."""
        ctx = AttentionContext(self.backend, self.kv, fb, self.backend.prepare(fb))
        return self.model(fb.input_ids, fb.positions, ctx)  # [T, H]
