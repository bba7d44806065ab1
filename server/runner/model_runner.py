"""`ModelRunner`: owns device state (model, KV pages, attention backend); Batch → logits.
Under tensor parallelism every rank holds one, built alike by `build_runner`: rank 0's turns a
scheduler `Batch` into a `ForwardBatch` and publishes it to the other ranks; each rank then
runs the same `run(fb)`, whose collectives meet inside the model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from server.core import Batch
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
    uses_graphs: bool  # denoise steps may replay CUDA graphs

    def forward(self, batch: Batch) -> torch.Tensor: ...  # fp32 logits [R, V]


class ModelRunner:
    uses_graphs = False

    def __init__(self, model: Ling2MoeForward, kv: KVCache, backend: AttentionBackend,
                 attn_block: int, device: torch.device, publish: Publish | None = None) -> None:
        self.model, self.kv, self.backend = model, kv, backend
        self.attn_block, self.device = attn_block, device
        self.publish = publish

    @torch.inference_mode()
    def forward(self, batch: Batch) -> torch.Tensor:
        """One forward over every segment; fp32 logits [R, V] of the rows segments asked for."""
        if self.publish is None:
            return self.run(build_forward_batch(batch, self.kv.page_size, self.attn_block,
                                                self.device))
        fb = build_forward_batch(batch, self.kv.page_size, self.attn_block, torch.device("cpu"))
        self.publish(fb)
        return self.run(fb.to(self.device))

    @torch.inference_mode()
    def run(self, fb: ForwardBatch) -> torch.Tensor:
        """Every rank: K/V into this rank's pages, then logits [R, V] of `fb.logits_indices`
        (complete on rank 0 only under tensor parallelism; see `compute_logits`)."""
        return self.model.compute_logits(self.hidden(fb)[fb.logits_indices])

    @torch.inference_mode()
    def hidden(self, fb: ForwardBatch) -> torch.Tensor:
        """Write this forward's K/V to its pages; pre-norm hidden states [T, H]."""
        ctx = AttentionContext(self.backend, self.kv, fb, self.backend.prepare(fb))
        return self.model(fb.input_ids, fb.positions, ctx)  # [T, H]
