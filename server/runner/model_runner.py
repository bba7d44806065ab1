"""`ModelRunner`: owns device state (model, KV pages, attention backend); Batch → logits."""

from __future__ import annotations

import torch

from server.core import Batch
from server.model.llada2_moe import Ling2MoeForward
from server.runner.attention import AttentionBackend, AttentionContext, KVCache
from server.runner.forward_batch import ForwardBatch, build_forward_batch


class ModelRunner:
    def __init__(self, model: Ling2MoeForward, kv: KVCache, backend: AttentionBackend,
                 attn_block: int, device: torch.device) -> None:
        self.model, self.kv, self.backend = model, kv, backend
        self.attn_block, self.device = attn_block, device

    @torch.inference_mode()
    def forward(self, batch: Batch) -> torch.Tensor:
        """One forward over every segment; fp32 logits [R, V] of the rows segments asked for."""
        fb = build_forward_batch(batch, self.kv.page_size, self.attn_block, self.device)
        return self.model.compute_logits(self.hidden(fb)[fb.logits_indices])  # [R, V]

    @torch.inference_mode()
    def hidden(self, fb: ForwardBatch) -> torch.Tensor:
        """Write this forward's K/V to its pages; pre-norm hidden states [T, H]."""
        ctx = AttentionContext(self.backend, self.kv, fb, self.backend.prepare(fb))
        return self.model(fb.input_ids, fb.positions, ctx)  # [T, H]
