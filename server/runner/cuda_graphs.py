"""CUDA graphs for every step: `GraphedRunner` wraps a `ModelRunner`.

A step is N query blocks (`server/runner/step_layout.py`): whatever its segments, it has a
fixed shape once N is padded to a bucket N' — ids/positions/slots [N'·Bq], per-block page-table
rows [N', max_pages] — and block i's rows attend key positions [0, position of its first row +
Bq): block-causal attention needs nothing else. One graph per bucket captures the decoder
layers (embedding to pre-norm hidden states); every bucket reads slices of one set of static
input buffers and writes one shared output buffer. The head (the rows that want logits, final
norm, lm_head) runs after the replay, so logits are computed for the rows that need them only,
in the model dtype. Pad blocks are Bq rows at positions 0..Bq-1 of the KV cache's scratch page,
which no sequence owns: their writes touch nothing real and their rows are never read. More
blocks than the largest bucket run eagerly.

Graphs are captured at start-up, largest bucket first (the shared memory pool is sized by the
first), with pad-only inputs, after the KV pool exists; a bucket whose capture fails is logged
and runs eagerly, the others keep their graphs. Attention is the engine's `PagedBlockAttention`
(Triton on CUDA: no host reads, no key padding), the kernel eager steps run too. On a GPU,
graphed and eager steps agree up to floating-point reduction order (GEMM and attention kernels
choose their tilings by batch size); on CPU the static computation is checked token for token
(`tests/unit/test_step_layout.py`)."""

from __future__ import annotations

import logging
import time
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


class GraphedRunner:
    """`max_blocks`: the largest bucket (the step's token budget in query blocks). `capture`
    False runs the static computation without a graph (the CPU check of the layout)."""

    uses_graphs = True

    def __init__(self, inner: ModelRunner, max_blocks: int, max_model_len: int,
                 capture: bool = True) -> None:
        assert isinstance(inner.backend, PagedBlockAttention)  # the graph-safe kernel
        scratch = inner.kv.scratch_page  # pad blocks' page
        assert scratch is not None and inner.attn_block <= inner.kv.page_size
        self.scratch: int = scratch
        self.inner = inner
        self.model, self.kv = inner.model, inner.kv
        self.backend: AttentionBackend = inner.backend
        self.attn_block, self.device = inner.attn_block, inner.device
        self.buckets = graph_buckets(max_blocks)
        self.capture = capture
        self.graphs: dict[int, torch.cuda.CUDAGraph | None] = {}  # None: no graph (CPU)
        self.failed: set[int] = set()  # buckets whose capture failed: eager
        self.pool: Any = None  # the graphs' shared memory pool
        self._stream: Any = None  # the warm-up stream of start-up capture
        Bq, ps, dev = self.attn_block, self.kv.page_size, self.device
        T, max_pages = max_blocks * Bq, -(-max_model_len // ps)
        # the static inputs every bucket reads a prefix of, and the pad blocks' constant rows
        pad_pos = torch.arange(Bq, device=dev).repeat(max_blocks)  # [T]
        self.pad = (torch.zeros(T, dtype=torch.long, device=dev), pad_pos,
                    self.scratch * ps + pad_pos)  # ids, positions, slots
        self.ids, self.positions, self.slots = (t.clone() for t in self.pad)  # [T] each
        self.table = torch.zeros(max_blocks, max_pages, dtype=torch.int32, device=dev)
        self.table[:, 0] = self.scratch  # [N', max_pages]; pad rows stay so
        self.out = torch.empty(T, inner.model.cfg.hidden_size, dtype=self.kv.k.dtype,
                               device=dev)  # [T, H]: every bucket's hidden states
        self._width = max_pages  # page-table columns attention reads (CPU: this step's)
        self.replays = 0  # steps served by a bucket's graph (or its static computation)
        self.eager_steps = 0
        self.rows_forwarded = 0  # rows of graphed steps, padding included
        self.rows_padding = 0

    # -- serving ----------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, batch: Batch, greedy: bool = False) -> Logits:
        n = query_blocks(batch, self.attn_block)
        bucket = graph_bucket(n, self.buckets)
        if bucket is None or bucket in self.failed:
            self.eager_steps += 1
            return self.inner.forward(batch, greedy)
        fb = build_forward_batch(batch, self.kv.page_size, self.attn_block, self.device)
        self._fill(fb, bucket)
        graph = self.graphs.get(bucket)
        if bucket not in self.graphs:  # CPU, or not captured at start-up: answers the step
            self._capture(bucket)
        elif graph is not None:
            graph.replay()
        else:
            self._static_forward(bucket)
        if bucket in self.failed:
            self.eager_steps += 1
            return self.inner.run(fb)
        self.replays += 1
        self.rows_forwarded += bucket * self.attn_block
        self.rows_padding += (bucket - n) * self.attn_block
        rows = self.out[: fb.num_tokens][fb.logits_indices]  # [R, H]
        return self.inner.head(rows, greedy)

    def _fill(self, fb: ForwardBatch | None, bucket: int) -> None:
        """The step's inputs into the first `bucket` blocks of the static buffers; the rest of
        the bucket are pad blocks. `fb` None: pad blocks only (capture at start-up)."""
        Bq, end = self.attn_block, bucket * self.attn_block
        T = fb.num_tokens if fb is not None else 0
        n = T // Bq
        for dst, pad, src in zip((self.ids, self.positions, self.slots), self.pad,
                                 (None, None, None) if fb is None else
                                 (fb.input_ids, fb.positions, fb.slot_mapping), strict=True):
            if src is not None:
                dst[:T].copy_(src)
            dst[T:end].copy_(pad[T:end])
        if fb is not None:
            per_seg = (fb.qo_indptr[1:] - fb.qo_indptr[:-1]) // Bq  # [S] cpu: blocks each
            seg_of = upload(torch.repeat_interleave(torch.arange(fb.num_segments), per_seg),
                            None, self.device)  # [N]
            w = fb.page_table.shape[1]
            assert w <= self.table.shape[1], (w, self.table.shape)  # within max_model_len
            self.table[:n].zero_()
            self.table[:n, :w] = fb.page_table[seg_of]
            if not self.capture:  # no graph: the torch reference need not scan max_model_len
                self._width = w
        self.table[n:bucket].zero_()
        self.table[n:bucket, 0] = self.scratch

    def _static_forward(self, bucket: int) -> None:
        """The captured computation: reads only the static buffers' first `bucket` blocks and
        writes `self.out`; no host reads, fixed shapes."""
        Bq = self.attn_block
        T = bucket * Bq
        ids, positions, slots = self.ids[:T], self.positions[:T], self.slots[:T]
        kv_len = positions.view(bucket, Bq)[:, 0] + Bq  # [N']: block-causal key range
        fb = ForwardBatch(ids, positions, slots, torch.arange(0, T + 1, Bq),
                          torch.zeros(bucket, dtype=torch.long), torch.full((bucket,), Bq),
                          self.table[:bucket], torch.arange(T, device=self.device), Bq,
                          self.kv.page_size)
        meta = BlockMeta(self.table[:bucket, : self._width], kv_len)
        ctx = AttentionContext(self.backend, self.kv, fb, meta)
        self.out[:T].copy_(self.model(ids, positions, ctx))

    # -- capture ----------------------------------------------------------------------------
    def capture_all(self, reserve: int | None = None) -> None:
        """Every bucket, largest first, with pad-only inputs (they write the scratch page).
        `reserve`: the bytes the memory profile kept for them (a warning if they took more)."""
        t0, before = time.perf_counter(), torch.cuda.memory_reserved(self.device)
        self._stream = torch.cuda.Stream(self.device)
        for bucket in reversed(self.buckets):
            self._fill(None, bucket)
            self._capture(bucket)
        took = torch.cuda.memory_reserved(self.device) - before
        gib = 1 << 30
        log.info("captured %d CUDA graphs (%d failed) of 1..%d query blocks of %d rows in "
                 "%.1fs; memory reserved +%.2f GiB (profile's reserve %s)",
                 len(self.graphs) - len(self.failed), len(self.failed), self.buckets[-1],
                 self.attn_block, time.perf_counter() - t0, took / gib,
                 "-" if reserve is None else f"{reserve / gib:.2f} GiB")
        if reserve is not None and took > reserve * 1.25 + (256 << 20):  # segment rounding
            log.warning("the CUDA graphs took %.2f GiB, more than the %.2f GiB the memory "
                        "profile kept for them: lower --gpu-memory-utilization if steps run "
                        "out of memory", took / gib, reserve / gib)

    def _capture(self, bucket: int) -> None:
        """Capture `bucket` over the inputs already in the static buffers (warm-up runs write
        only the K/V those inputs write); leaves their answer in `self.out`, unless the capture
        failed (the bucket is then in `failed`). Without `capture`: the static computation."""
        if not self.capture:
            self.graphs[bucket] = None
            self._static_forward(bucket)
            return
        dev = self.device
        try:
            stream = self._stream or torch.cuda.Stream(dev)
            stream.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(stream), torch.inference_mode():
                for _ in range(2):  # allocator, Triton JIT, cuBLAS handles
                    self._static_forward(bucket)
            torch.cuda.current_stream(dev).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph, pool=self.pool):
                self._static_forward(bucket)
        except Exception:  # noqa: BLE001 - this bucket runs eagerly from now on
            log.exception("CUDA graph capture failed for %d query blocks; that bucket runs "
                          "eagerly", bucket)
            self.failed.add(bucket)
            self.graphs[bucket] = None
            return
        self.pool = graph.pool()
        self.graphs[bucket] = graph
        graph.replay()
