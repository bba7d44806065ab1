"""Attention backends over the paged KV tensors, chosen once by name (small lazy registry)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from server.kv_cache.tensors import KVCache
from server.runner.forward_batch import ForwardBatch
from server.transfer import upload

log = logging.getLogger(__name__)


class AttentionBackend(Protocol):
    name: str

    def prepare(self, fb: ForwardBatch) -> Any: ...

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv: KVCache, fb: ForwardBatch, meta: Any) -> torch.Tensor: ...


@dataclass(slots=True)
class AttentionContext:
    """Everything an attention layer needs for one forward, passed down explicitly."""

    backend: AttentionBackend
    kv: KVCache
    fb: ForwardBatch
    meta: Any

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
               ) -> torch.Tensor:
        return self.backend.forward(layer, q, k, v, self.kv, self.fb, self.meta)


@dataclass(slots=True)
class _TorchMeta:
    q_rows: torch.Tensor  # [S, Qmax] row of each padded query (pads point at row 0)
    q_valid: torch.Tensor  # [S, Qmax] bool
    kv_slots: torch.Tensor  # [S, Kmax] slot of each key position (pads point at slot 0)
    mask: torch.Tensor  # [S, 1, Qmax, Kmax] bool: True = may attend


class TorchAttention:
    """Reference backend: write this forward's K/V to their slots, gather each segment's keys
    from the pages, pad segments to one rectangle and run SDPA with an explicit mask."""

    name = "torch"

    def prepare(self, fb: ForwardBatch) -> _TorchMeta:
        dev = fb.input_ids.device
        q_len_host = fb.qo_indptr[1:] - fb.qo_indptr[:-1]  # [S] cpu
        q_max, k_max = int(q_len_host.max()), int(fb.kv_len.max())  # host tensors: no sync
        q_len, q_start, kv_len = (upload(t, None, dev) for t in (q_len_host, fb.q_start,
                                                                  fb.kv_len))
        qi = torch.arange(q_max, device=dev)
        q_valid = qi[None, :] < q_len[:, None]  # [S, Qmax]
        first = upload(fb.qo_indptr[:-1], None, dev)  # [S]
        q_rows = torch.where(q_valid, first[:, None] + qi[None, :], 0)
        kpos = torch.arange(k_max, device=dev)  # [Kmax]
        page = fb.page_table.gather(1, (kpos // fb.page_size).clamp(max=fb.page_table.shape[1] - 1)
                                    .expand(fb.num_segments, -1))
        kv_slots = page * fb.page_size + kpos % fb.page_size  # [S, Kmax]
        qpos = q_start[:, None] + qi[None, :]  # [S, Qmax]
        blk = fb.attn_block
        visible = (kpos[None, None, :] // blk <= qpos[:, :, None] // blk) & (
            kpos[None, None, :] < kv_len[:, None, None]
        )
        visible = visible | ~q_valid[:, :, None]  # padded rows see everything (discarded later)
        return _TorchMeta(q_rows, q_valid, kv_slots.masked_fill(kpos >= kv_len[:, None], 0),
                          visible.unsqueeze(1))

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv: KVCache, fb: ForwardBatch, meta: _TorchMeta) -> torch.Tensor:
        # q [T, nh, hd]; k, v [T, nkv, hd] → [T, nh, hd]
        kv.k[layer].index_copy_(0, fb.slot_mapping, k)
        kv.v[layer].index_copy_(0, fb.slot_mapping, v)
        qs = self._rows(q, meta).transpose(1, 2)  # [S, nh, Qmax, hd]
        ks = kv.k[layer][meta.kv_slots].transpose(1, 2)  # [S, nkv, Kmax, hd]
        vs = kv.v[layer][meta.kv_slots].transpose(1, 2)
        out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=meta.mask, enable_gqa=True)
        return self._tokens(out.transpose(1, 2), q, meta)  # [T, nh, hd] in segment order

    def _rows(self, q: torch.Tensor, meta: _TorchMeta) -> torch.Tensor:
        return q[meta.q_rows]  # [T, nh, hd] → [S, Qmax, nh, hd]

    def _tokens(self, out: torch.Tensor, q: torch.Tensor, meta: _TorchMeta) -> torch.Tensor:
        return out[meta.q_valid]  # [S, Qmax, nh, hd] → [T, nh, hd]


@dataclass(slots=True)
class BlockMeta:
    table: torch.Tensor  # [N, pages] int32: query block i's page-table row
    kv_len: torch.Tensor  # [N] long: keys block i attends ([0, kv_len))


class PagedBlockAttention:
    """The step as query blocks of `attn_block` rows (`server/runner/step_layout.py`): K/V into
    their slots, then every block over its own keys [0, its end) through the paged kernel of
    the "attention" registry (Triton on CUDA: no host reads, so CUDA graphs capture it; the
    torch reference elsewhere). The graph runner builds the same `BlockMeta` in static
    buffers: eager and graphed steps run one kernel."""

    name = "paged"

    def __init__(self, device_type: str) -> None:
        import unmask_kernels.attention  # noqa: F401 - registers the "attention" backends
        from unmask_kernels.registry import resolve

        self.kernel_name, self.kernel = resolve("attention", "auto", device_type)

    def prepare(self, fb: ForwardBatch) -> BlockMeta:
        Bq, dev = fb.attn_block, fb.input_ids.device
        per_seg = (fb.qo_indptr[1:] - fb.qo_indptr[:-1]) // Bq  # [S] cpu: blocks each
        seg_of = upload(torch.repeat_interleave(torch.arange(fb.num_segments), per_seg), None,
                        dev)  # [N]
        kv_len = fb.positions.view(-1, Bq)[:, 0] + Bq  # [N]: block-causal key range
        # int32 as in the graphs' static table: one compiled kernel variant for both
        return BlockMeta(fb.page_table[seg_of].to(torch.int32), kv_len)

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv: KVCache, fb: ForwardBatch, meta: BlockMeta) -> torch.Tensor:
        # q [N·Bq, nh, hd]; k, v [N·Bq, nkv, hd] → [N·Bq, nh, hd]
        kv.k[layer].index_copy_(0, fb.slot_mapping, k)
        kv.v[layer].index_copy_(0, fb.slot_mapping, v)
        return self.kernel(q, kv.k[layer], kv.v[layer], meta.table, meta.kv_len, kv.page_size)


def _flashinfer() -> AttentionBackend:
    from server.runner.flashinfer_attention import FlashInferAttention  # lazy: GPU-only package

    return FlashInferAttention()


_BACKENDS: dict[str, Callable[[str], AttentionBackend]] = {
    "torch": lambda _: TorchAttention(), "sdpa": lambda _: TorchAttention(),
    "flashinfer": lambda _: _flashinfer(), "paged": PagedBlockAttention}


def register_backend(name: str, factory: Callable[[str], AttentionBackend]) -> None:
    """`factory(device_type)` builds the backend."""
    _BACKENDS[name] = factory


def create_backend(name: str, device: torch.device) -> AttentionBackend:
    """Chosen once and logged. 'auto' is the paged query-block kernel on CUDA (the one CUDA
    graphs capture) and torch (SDPA) elsewhere. See docs/kernels.md."""
    if name == "auto":
        name = "paged" if device.type == "cuda" else "torch"
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; available: {sorted(_BACKENDS)}")
    if name == "flashinfer" and (device.type != "cuda" or not _has_flashinfer()):
        raise ValueError("attention backend 'flashinfer' needs a CUDA device and the "
                         "flashinfer-python package (extra 'gpu')")
    backend = _BACKENDS[name](device.type)
    log.info("attention backend: %s (%s)", backend.name, device.type)
    return backend


def _has_flashinfer() -> bool:
    import importlib.util

    return importlib.util.find_spec("flashinfer") is not None
