"""The KV pool's size from a memory profile (vLLM's `--gpu-memory-utilization`): the device's
total memory times the utilization, minus what is in use after loading the weights, a
profiled maximal step's peak and the CUDA graphs' reserve (`server/runner/memory.py` measures
them)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)
GIB = 1 << 30


@dataclass(frozen=True)
class MemoryProfile:
    total: int  # device memory, bytes
    in_use: int  # used on the device after loading the weights (all processes)
    peak_step: int  # a maximal step's peak above the weights
    graph_reserve: int  # kept for the CUDA graphs' pool (0 without graphs)

    def pool_bytes(self, utilization: float) -> int:
        return int(self.total * utilization) - self.in_use - self.peak_step - self.graph_reserve


def pool_pages(profile: MemoryProfile, utilization: float, page_bytes: int) -> int:
    """Pages the profiled memory leaves for the pool (logged with the figures)."""
    if not 0 < utilization <= 1:
        raise ValueError(f"--gpu-memory-utilization must be in (0, 1], got {utilization}")
    pages = max(0, profile.pool_bytes(utilization)) // page_bytes
    log.info("memory: %.2f GiB total x %.2f; %.2f GiB in use after loading; profiled step "
             "peak %.2f GiB; CUDA graph reserve %.2f GiB; KV pool %d pages (%.2f GiB)",
             profile.total / GIB, utilization, profile.in_use / GIB, profile.peak_step / GIB,
             profile.graph_reserve / GIB, pages, pages * page_bytes / GIB)
    return pages


def check_room(pages: int, profile: MemoryProfile, utilization: float, page_bytes: int,
               page_size: int, max_model_len: int) -> None:
    """ValueError, naming the flags, when `pages` (agreed by every rank) cannot hold one
    request of `max_model_len` positions."""
    need = -(-max_model_len // page_size)
    if pages >= need:
        return
    budget = max(0, profile.pool_bytes(utilization))
    raise ValueError(
        f"not enough GPU memory for one request of the context length {max_model_len}: it "
        f"needs {need} KV pages ({need * page_bytes / GIB:.2f} GiB) but "
        f"{profile.total / GIB:.2f} GiB x --gpu-memory-utilization {utilization} leaves "
        f"{pages} pages ({budget / GIB:.2f} GiB) after the weights and other use "
        f"({profile.in_use / GIB:.2f} GiB), the profiled step peak "
        f"({profile.peak_step / GIB:.2f} GiB) and the CUDA graph reserve "
        f"({profile.graph_reserve / GIB:.2f} GiB); raise --gpu-memory-utilization, lower "
        "--max-model-len, --max-num-batched-tokens or --max-running-requests, or run with "
        "--enforce-eager")
