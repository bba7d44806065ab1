"""`build_runner`: the one place a model runner is built, by the single-process engine and by
every tensor-parallel rank alike. Backends are chosen here, once, and passed in: the attention
backend by name, the routed-experts kernel from the "moe" registry; nothing is patched onto an
object after construction."""

from __future__ import annotations

import logging

import torch

from server.config import EngineConfig
from server.kv_cache.sizing import check_room
from server.kv_cache.tensors import KVCache
from server.model.loader import load_model
from server.model.parallel import SINGLE, TPGroup, local_kv_heads
from server.runner.attention import create_backend
from server.runner.cuda_graphs import AR_MAX_GRAPH_ROWS
from server.runner.memory import profile_memory
from server.runner.model_runner import ModelRunner, Publish, Runner
from server.startup import StartupPlan, kv_pages
from unmask_kernels.moe.grouped import grouped_mm_capturable
from unmask_kernels.registry import resolve

log = logging.getLogger(__name__)


def build_runner(cfg: EngineConfig, plan: StartupPlan, tp: TPGroup = SINGLE,
                 device: torch.device | None = None, publish: Publish | None = None) -> Runner:
    """This rank's runner on `device` (default: the plan's). The KV pool is sized after the
    weights are loaded — on a GPU from a profiled maximal step (`server/runner/memory.py`);
    under tensor parallelism the ranks agree on the smallest pool, so page ids mean the same on
    every rank. `publish` (rank 0 of several) sends each step's inputs."""
    device = device or plan.device
    mcfg = plan.mcfg
    attention = create_backend(cfg.attention_backend, device)
    moe, experts = resolve("moe", cfg.moe_backend, device.type)
    model = load_model(plan.model_dir, mcfg, plan.dtype, device, plan.max_model_len, tp, experts,
                       cfg.load_format)
    graphs = device.type == "cuda" and not cfg.enforce_eager and _graphable(
        moe, attention.name, tp.size, plan, device)
    never = plan.specials.mask_id if plan.block_size is not None else None

    def runner_over(kv: KVCache) -> ModelRunner:
        return ModelRunner(model, kv, attention, plan.attn_block, device, publish, never)

    def kv_of(pages: int) -> KVCache:
        return KVCache(mcfg.num_hidden_layers, pages, plan.page_size,
                       local_kv_heads(mcfg, tp.size), mcfg.head_dim, plan.dtype, device,
                       scratch=graphs)

    profile = None
    sched = cfg.scheduler
    tokens = sched.max_num_batched_tokens // plan.attn_block * plan.attn_block
    max_blocks = (tokens // plan.attn_block if plan.block_size is not None
                  else min(tokens, AR_MAX_GRAPH_ROWS))  # the largest graph bucket
    if device.type == "cuda" and cfg.cache.num_pages is None and cfg.cache.kv_cache_memory is None:
        profile = profile_memory(runner_over(kv_of(1)), tokens, sched.max_running_requests,
                                 plan.attn_block, plan.max_model_len,
                                 max_blocks * plan.attn_block if graphs else None)
    pages = tp.agree_min(kv_pages(cfg, mcfg, tp.size, plan.page_size, plan.dtype, device,
                                  profile))
    if profile is not None:  # every rank holds the same agreed count: all refuse, or none
        check_room(pages, profile, cfg.cache.gpu_memory_utilization, KVCache.bytes_per_page(
            mcfg.num_hidden_layers, plan.page_size, local_kv_heads(mcfg, tp.size),
            mcfg.head_dim, plan.dtype), plan.page_size, plan.max_model_len)
    inner = runner_over(kv_of(pages))
    runner: Runner = inner
    if graphs:
        from server.runner.cuda_graphs import GraphedRunner

        graphed = GraphedRunner(inner, max_blocks, plan.max_model_len)
        graphed.capture_all(profile.graph_reserve if profile is not None else None)
        runner = graphed
    log.info("rank %d/%d runner: %d KV pages of %d, moe %s, attention %s, CUDA graphs %s",
             tp.rank, tp.size, pages, plan.page_size, moe, attention.name,
             "on" if graphs else "off")
    return runner


def _graphable(moe: str, attention: str, tp_size: int, plan: StartupPlan,
               device: torch.device) -> bool:
    """CUDA graphs capture the paged query-block kernel (the one eager steps run too) and
    routed experts without host reads: Triton's, or `torch._grouped_mm`'s where it has its
    kernel (the torch loop reads expert counts back). Logged when they cannot be on."""
    m = plan.mcfg
    why = ("tensor parallel size > 1" if tp_size > 1 else
           f"attention backend {attention!r} (graphs need 'paged')" if attention != "paged" else
           None)
    if why is None and moe != "triton" and not grouped_mm_capturable(
            plan.dtype, device, m.hidden_size, m.moe_intermediate_size):
        why = (f"moe backend {moe!r} runs the per-expert loop here (torch._grouped_mm has "
               "its kernel for bf16 on sm90/sm100 only); use --moe-backend triton")
    if why is not None:
        log.warning("CUDA graphs off: %s", why)
    return why is None
