"""Engine configuration: frozen dataclasses, one per component, plus per-architecture defaults."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

# Per-architecture diffusion defaults (block size = page size), overridable by flags.
DIFFUSION_DEFAULTS: dict[str, dict[str, int]] = {
    "LLaDA2MoeModelLM": {"block_size": 32},
}
AR_PAGE_SIZE = 32


@dataclass(frozen=True)
class CacheConfig:
    kv_cache_memory: int | None = None  # bytes for KV pages; None → fraction/default
    # vLLM's meaning: the share of the device's total memory this engine may use (weights,
    # the profiled peak of a maximal step, CUDA graphs, KV pool); the pool gets what remains
    gpu_memory_utilization: float = 0.9
    num_pages: int | None = None  # explicit pool size (overrides the memory budget)
    prefix_caching: bool = True


@dataclass(frozen=True)
class SchedulerConfig:
    max_running_requests: int = 64
    max_num_batched_tokens: int = 8192  # token budget of one forward
    admission_reserve_pages: int = 1  # headroom per running sequence kept free at admission


@dataclass(frozen=True)
class DiffusionConfig:
    block_size: int | None = None  # None → architecture default
    threshold: float = 0.95  # default commit threshold (per-request override)
    # LLaDA2.1 editing default: a threshold, "off", or None = the checkpoint's
    # generation_config.json `editing_threshold` if it has one, else off
    editing_threshold: float | str | None = None
    max_post_steps: int | None = None  # None → generation_config.json's, else 16
    # benchmarking oracle: commit a fixed schedule averaging this many tokens per forward
    # (threshold ignored; figures from it are "simulated TPF"). None = the real rule.
    simulate_tpf: float | None = None


@dataclass(frozen=True)
class EngineConfig:
    model: str
    device: str = "auto"  # auto → cuda if available else cpu
    dtype: str = "auto"  # auto → bfloat16 on GPU, float32 on CPU
    seed: int = 0  # engine sampler seed for requests without their own
    max_model_len: int | None = None  # None → the model's maximum (ModelConfig.max_context)
    hf_overrides: dict[str, Any] | None = None  # config.json keys replaced (e.g. rope_scaling)
    attention_backend: str = "auto"
    acceptance_backend: str = "auto"  # auto → triton on CUDA, torch elsewhere
    moe_backend: str = "auto"  # auto → triton on CUDA, torch elsewhere
    enforce_eager: bool = False  # no CUDA graphs (no-op on CPU)
    load_format: str = "auto"  # auto: the checkpoint's safetensors; dummy: random weights
    cpu_threads: int | None = None  # torch intra-op threads on CPU; None = torch's default
    tensor_parallel_size: int = 1  # engine ranks (server/distributed); 1 = this process only
    nnodes: int = 1  # nodes the tensor_parallel_size ranks are spread over (equal shares)
    node_rank: int = 0  # this node; 0 runs the API and rank 0, k > 0 only its ranks
    dist_init_addr: str | None = None  # HOST:PORT of node 0: the process group's TCPStore
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    def to_json(self) -> str:
        """JSON (the configuration a local rank is started with: plain data, no pickle)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> EngineConfig:
        d = json.loads(text)
        return cls(**d | {"cache": CacheConfig(**d["cache"]),
                          "scheduler": SchedulerConfig(**d["scheduler"]),
                          "diffusion": DiffusionConfig(**d["diffusion"])})


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(text: str | int) -> int:
    """'2GiB', '512M', '1.5g', 1073741824 → bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not m:
        raise ValueError(f"cannot parse a memory size from {text!r} (e.g. 2GiB, 512M)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])
