"""CUDA graphs for denoise steps: `GraphedDenoiseRunner` wraps a `ModelRunner`.

A denoise-only batch (every segment is exactly one active block of B query rows, all asking for
logits, attending to its committed pages plus itself) has a fixed shape once padded to a batch
bucket S' and a key bucket K': ids/positions/slots [S'*B], page table [S', K'/page_size]. One
graph per (S', K') is captured on first use and replayed after copying the step's inputs into
its static buffers. Everything else (prefill chunks, mixed batches, more than the largest
bucket) runs eager. Pad segments repeat segment 0 (same ids, positions and slots), so their K/V
writes are identical duplicates and their logits are dropped.

Inside the graph attention is the torch (SDPA) computation over a static key range [0, K')
with kpos < kv_len masked, whatever eager backend is configured: it has no host syncs. The
routed experts must be graph-safe (the Triton grouped GEMM is; the torch loop reads counts
back to the host): if capture fails, graphs are switched off for good and logged."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from server.core import Batch, Logits
from server.runner.attention import AttentionContext, TorchAttention, _TorchMeta
from server.runner.forward_batch import ForwardBatch, build_forward_batch
from server.runner.model_runner import ModelRunner

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
KEY_BUCKETS = (256, 512, 1024, 2048, 4096, 8192)


class _StaticAttention(TorchAttention):
    """The torch backend's math with every query row valid: rows come back by reshape, not by
    a boolean index (which would read a count back to the host and break capture)."""

    def _rows(self, q: torch.Tensor, meta: _TorchMeta) -> torch.Tensor:
        return q.view(*meta.q_rows.shape, *q.shape[1:])  # [T, nh, hd] → [S', B, nh, hd]

    def _tokens(self, out: torch.Tensor, q: torch.Tensor, meta: _TorchMeta) -> torch.Tensor:
        return out.reshape(q.shape)  # [S', B, nh, hd] → [T, nh, hd]


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph | None  # None: static computation run eagerly (CPU check)
    ids: torch.Tensor  # [S'*B] long
    positions: torch.Tensor  # [S'*B] long
    slots: torch.Tensor  # [S'*B] long
    table: torch.Tensor  # [S', K'/ps] long
    kv_len: torch.Tensor  # [S'] long
    logits: torch.Tensor  # [S'*B, V] fp32 (output)


class GraphedDenoiseRunner:
    uses_graphs = True

    def __init__(self, inner: ModelRunner, block_size: int, max_model_len: int,
                 capture: bool = True) -> None:
        self.inner = inner
        self.model, self.kv, self.backend = inner.model, inner.kv, inner.backend
        self.attn_block, self.device = inner.attn_block, inner.device
        self.block = block_size
        self.key_buckets = [k for k in KEY_BUCKETS if k % block_size == 0 and
                            k < max_model_len] + [max_model_len]
        self.graphs: dict[tuple[int, int], _Graph] = {}
        self.pool: Any = None  # the graphs' shared memory pool handle
        self.enabled = True
        self.capture = capture  # False: run the static computation without a graph (CPU)
        self._attn = _StaticAttention()
        self.replays = 0  # denoise steps served by a graph (tests, metrics)

    def forward(self, batch: Batch, greedy: bool = False) -> Logits:
        """fp32 logits [R, V] (one rank: `greedy` needs no other form)."""
        key = self._bucket(batch) if self.enabled else None
        if key is None:
            return self.inner.forward(batch)
        fb = build_forward_batch(batch, self.kv.page_size, self.attn_block, self.device)
        g = self.graphs.get(key)
        if g is None:
            try:
                g = self.graphs[key] = self._capture(*key, fb)
                self.replays += 1
                return g.logits[: fb.num_tokens]
            except Exception:  # noqa: BLE001 - any capture failure: eager from now on
                log.exception("CUDA graph capture failed for %s; denoise steps stay eager", key)
                self.enabled = False
                return self.inner.forward(batch)
        self._fill(g, fb)
        if g.graph is None:
            g.logits = self._static_forward(g)
        else:
            g.graph.replay()
        self.replays += 1
        return g.logits[: fb.num_tokens]

    def _bucket(self, batch: Batch) -> tuple[int, int] | None:
        B, segs = self.block, batch.segments
        if not segs or len(segs) > BATCH_BUCKETS[-1]:
            return None
        for s in segs:
            if s.num_tokens != B or s.logits_start != s.start or s.start % B:
                return None
        longest = max(s.end for s in segs)
        k = next((k for k in self.key_buckets if k >= longest), None)
        if k is None:
            return None
        return next(b for b in BATCH_BUCKETS if b >= len(segs)), k

    def _fill(self, g: _Graph, fb: ForwardBatch) -> None:
        n, S = fb.num_tokens, fb.num_segments
        for dst, src in ((g.ids, fb.input_ids), (g.positions, fb.positions),
                         (g.slots, fb.slot_mapping)):
            dst[:n].copy_(src, non_blocking=True)
            dst[n:].copy_(src[: self.block].repeat(dst.shape[0] // self.block - S))
        w = min(fb.page_table.shape[1], g.table.shape[1])
        g.table.zero_()
        g.table[:S, :w].copy_(fb.page_table[:, :w], non_blocking=True)
        g.table[S:] = g.table[0]
        g.kv_len[:S].copy_(fb.kv_len.to(self.device, non_blocking=True))
        g.kv_len[S:] = g.kv_len[0]

    def _buffers(self, bs: int, k_max: int) -> _Graph:
        dev = self.device
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.long, device=dev)  # noqa: E731
        T = bs * self.block
        return _Graph(None, zeros(T), zeros(T), zeros(T), zeros(bs, k_max // self.kv.page_size),
                      zeros(bs), torch.empty(0, device=dev))

    def _static_forward(self, g: _Graph) -> torch.Tensor:
        """The captured computation: reads only g's buffers; no host syncs, fixed shapes."""
        bs, k_max = g.table.shape[0], g.table.shape[1] * self.kv.page_size
        B, ps, dev = self.block, self.kv.page_size, self.device
        T = bs * B
        fb = ForwardBatch(g.ids, g.positions, g.slots, torch.arange(0, T + 1, B),
                          torch.zeros(bs, dtype=torch.long), torch.full((bs,), B),
                          g.table, torch.arange(T, device=dev), B, ps)
        q_rows = torch.arange(T, device=dev).view(bs, B)  # [S', B]
        q_valid = torch.ones(bs, B, dtype=torch.bool, device=dev)
        kpos = torch.arange(k_max, device=dev)  # [K']
        kv_slots = g.table.gather(1, (kpos // ps).expand(bs, -1)) * ps + kpos % ps  # [S', K']
        visible = (kpos[None, :] < g.kv_len[:, None])[:, None, None, :]  # [S', 1, 1, K']
        meta = _TorchMeta(q_rows, q_valid, kv_slots, visible.expand(bs, 1, B, k_max))
        hidden = self.model(g.ids, g.positions, AttentionContext(self._attn, self.kv, fb, meta))
        return self.model.compute_logits(hidden)  # [T, V]

    def _capture(self, bs: int, k_max: int, first: ForwardBatch) -> _Graph:
        """Warm-up runs use `first` (the step being served): they write exactly the K/V that
        step writes, so capturing mid-serving never touches another sequence's pages. The last
        warm-up's logits are that step's answer; the graph is then captured."""
        dev = self.device
        g = self._buffers(bs, k_max)
        self._fill(g, first)
        if not self.capture:  # CPU check of the static computation, no graph
            g.logits = self._static_forward(g)
            return g
        stream = torch.cuda.Stream(dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):  # warm up: allocator, Triton JIT, cuBLAS handles
                answer = self._static_forward(g)
        torch.cuda.current_stream(dev).wait_stream(stream)
        g.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(g.graph, pool=self.pool):
            g.logits = self._static_forward(g)
        self.pool = g.graph.pool()
        g.logits.copy_(answer)  # the step being served gets its (eager warm-up) logits
        log.info("captured denoise CUDA graph: batch %d x block %d, keys %d", bs,
                 self.block, k_max)
        return g
