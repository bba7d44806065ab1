"""CUDA graphs for every step: `GraphedRunner` wraps a `ModelRunner`.

A step is N query blocks (`server/runner/step_layout.py`): whatever its segments, it has a
fixed shape once N is padded to a bucket N' — ids/positions/slots [N'·Bq], per-block page-table
rows [N', max_pages] — and block i's rows attend key positions [0, position of its first row +
Bq): block-causal attention needs nothing else. One graph per bucket captures the decoder
layers (embedding to pre-norm hidden states) into one output buffer that all buckets share;
the head (the rows that want logits, final norm, lm_head) runs after the replay, so logits are
computed for the rows that need them only, in the model dtype. Pad blocks repeat block 0 (same
ids, positions, slots and page row): their K/V writes duplicate block 0's exactly and their
rows are never read. More blocks than the largest bucket run eagerly.

Attention is the engine's `PagedBlockAttention` (Triton on CUDA: no host reads, no key
padding), the same kernel eager steps run, so a step's tokens do not depend on whether it was
graphed. A bucket whose capture fails runs eagerly from then on (logged); the other buckets
keep their graphs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from server.core import Batch, Logits
from server.runner.attention import (
    AttentionBackend,
    AttentionContext,
    BlockMeta,
    PagedBlockAttention,
)
from server.runner.forward_batch import ForwardBatch, build_forward_batch
from server.runner.model_runner import ModelRunner
from server.runner.step_layout import graph_bucket, graph_buckets, query_blocks
from server.transfer import upload

log = logging.getLogger(__name__)

AR_MAX_GRAPH_ROWS = 512  # autoregressive steps beyond this many rows are prefill: eager


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph | None  # None: the static computation run eagerly (CPU)
    ids: torch.Tensor  # [N'·Bq] long
    positions: torch.Tensor  # [N'·Bq] long
    slots: torch.Tensor  # [N'·Bq] long
    table: torch.Tensor  # [N', max_pages] long


class GraphedRunner:
    """`max_blocks`: the largest bucket (the step's token budget in query blocks). `capture`
    False runs the static computation without a graph (the CPU check of the layout)."""

    uses_graphs = True

    def __init__(self, inner: ModelRunner, max_blocks: int, max_model_len: int,
                 capture: bool = True) -> None:
        assert isinstance(inner.backend, PagedBlockAttention)  # the graph-safe kernel
        self.inner = inner
        self.model, self.kv = inner.model, inner.kv
        self.backend: AttentionBackend = inner.backend
        self.attn_block, self.device = inner.attn_block, inner.device
        self.buckets = graph_buckets(max_blocks)
        self.max_pages = -(-max_model_len // self.kv.page_size)
        self.capture = capture
        self.graphs: dict[int, _Graph] = {}
        self.failed: set[int] = set()  # buckets whose capture failed: eager
        self.pool: Any = None  # the graphs' shared memory pool
        hidden = inner.model.cfg.hidden_size
        dtype = inner.kv.k.dtype
        # [max_blocks·Bq, H]: every bucket's output (pre-norm hidden states)
        self.out = torch.empty(max_blocks * self.attn_block, hidden, dtype=dtype,
                               device=self.device)
        self._width = self.max_pages  # page-table columns attention reads (CPU: this step's)
        self.replays = 0  # steps served by a bucket's graph (or its static computation)
        self.eager_steps = 0
        self.rows_forwarded = 0  # rows of graphed steps, padding included
        self.rows_padding = 0

    def forward(self, batch: Batch, greedy: bool = False) -> Logits:
        n = query_blocks(batch, self.attn_block)
        bucket = graph_bucket(n, self.buckets)
        if bucket is None or bucket in self.failed:
            self.eager_steps += 1
            return self.inner.forward(batch, greedy)
        fb = build_forward_batch(batch, self.kv.page_size, self.attn_block, self.device)
        g = self.graphs.get(bucket)
        if g is None:
            try:
                g = self.graphs[bucket] = self._capture(bucket, fb)
            except Exception:  # noqa: BLE001 - this bucket runs eagerly from now on
                log.exception("CUDA graph capture failed for %d query blocks; that bucket "
                              "runs eagerly", bucket)
                self.failed.add(bucket)
                self.eager_steps += 1
                return self.inner.run(fb)
        else:
            self._fill(g, fb)
            if g.graph is None:
                self._static_forward(g)
            else:
                g.graph.replay()
        self.replays += 1
        self.rows_forwarded += bucket * self.attn_block
        self.rows_padding += (bucket - n) * self.attn_block
        rows = self.out[: fb.num_tokens][fb.logits_indices]  # [R, H]
        return self.inner.head(rows, greedy)

    def _fill(self, g: _Graph, fb: ForwardBatch) -> None:
        """The step's inputs into the bucket's buffers; pads repeat block 0."""
        T, Bq = fb.num_tokens, self.attn_block
        for dst, src in ((g.ids, fb.input_ids), (g.positions, fb.positions),
                         (g.slots, fb.slot_mapping)):
            dst[:T].copy_(src)
            dst[T:].view(-1, Bq).copy_(src[:Bq].expand(dst.shape[0] // Bq - T // Bq, Bq))
        per_seg = ((fb.qo_indptr[1:] - fb.qo_indptr[:-1]) // Bq)  # [S] cpu: blocks each
        seg_of = upload(torch.repeat_interleave(torch.arange(fb.num_segments), per_seg), None,
                        self.device)  # [N]
        w = fb.page_table.shape[1]
        if not self.capture:  # no graph: the torch reference need not scan max_model_len
            self._width = w
        g.table.zero_()
        g.table[: seg_of.shape[0], :w] = fb.page_table[seg_of]
        g.table[seg_of.shape[0]:] = g.table[0]

    def _static_forward(self, g: _Graph) -> None:
        """The captured computation: reads only g's buffers, writes `self.out`; no host reads,
        fixed shapes."""
        N, Bq = g.table.shape[0], self.attn_block
        T = N * Bq
        kv_len = g.positions.view(N, Bq)[:, 0] + Bq  # [N']: block-causal key range
        fb = ForwardBatch(g.ids, g.positions, g.slots, torch.arange(0, T + 1, Bq),
                          torch.zeros(N, dtype=torch.long), torch.full((N,), Bq), g.table,
                          torch.arange(T, device=self.device), Bq, self.kv.page_size)
        meta = BlockMeta(g.table[:, : self._width], kv_len)
        ctx = AttentionContext(self.backend, self.kv, fb, meta)
        self.out[:T].copy_(self.model(g.ids, g.positions, ctx))

    def _capture(self, bucket: int, first: ForwardBatch) -> _Graph:
        """Warm-up runs use `first` (the step being served): they write exactly the K/V that
        step writes, so capturing mid-serving never touches another sequence's pages. The
        warm-up leaves the step's answer in `self.out`, which the capture then recomputes
        identically."""
        T, dev = bucket * self.attn_block, self.device
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.long, device=dev)  # noqa: E731
        g = _Graph(None, zeros(T), zeros(T), zeros(T), zeros(bucket, self.max_pages))
        self._fill(g, first)
        if not self.capture:
            self._static_forward(g)
            return g
        stream = torch.cuda.Stream(dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):  # allocator, Triton JIT, cuBLAS handles
                self._static_forward(g)
        torch.cuda.current_stream(dev).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=self.pool):
            self._static_forward(g)
        self.pool = graph.pool()
        g.graph = graph
        graph.replay()  # the step being served
        log.info("captured CUDA graph: %d query blocks of %d rows", bucket, self.attn_block)
        return g
