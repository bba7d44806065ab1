"""`build_runner`: the one place a model runner is built, by the single-process engine and by
every tensor-parallel rank alike. Backends are chosen here, once, and passed in: the attention
backend by name, the routed-experts kernel from the "moe" registry; nothing is patched onto an
object after construction."""

from __future__ import annotations

import logging

import torch

from server.config import EngineConfig
from server.kv_cache.tensors import KVCache
from server.model.loader import load_model
from server.model.parallel import SINGLE, TPGroup, local_kv_heads
from server.runner.attention import create_backend
from server.runner.memory import profile_memory
from server.runner.model_runner import ModelRunner, Publish, Runner
from server.startup import StartupPlan, kv_pages
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
    # graphs capture the paged query-block kernel, the one their eager steps run too
    graphs = (device.type == "cuda" and not cfg.enforce_eager and tp.size == 1
              and attention.name == "paged")
    if device.type == "cuda" and not cfg.enforce_eager and not graphs:
        log.warning("CUDA graphs off: they need tensor parallel size 1 and the 'paged' "
                    "attention backend (got %d, %r)", tp.size, attention.name)
    never = plan.specials.mask_id if plan.block_size is not None else None

    def runner_over(kv: KVCache) -> ModelRunner:
        return ModelRunner(model, kv, attention, plan.attn_block, device, publish, never)

    def kv_of(pages: int) -> KVCache:
        return KVCache(mcfg.num_hidden_layers, pages, plan.page_size,
                       local_kv_heads(mcfg, tp.size), mcfg.head_dim, plan.dtype, device)

    profile = None
    if device.type == "cuda" and cfg.cache.num_pages is None and cfg.cache.kv_cache_memory is None:
        sched = cfg.scheduler
        profile = profile_memory(runner_over(kv_of(1)), sched.max_num_batched_tokens,
                                 sched.max_running_requests, plan.attn_block,
                                 plan.max_model_len, graphs)
    pages = tp.agree_min(kv_pages(cfg, mcfg, tp.size, plan.page_size, plan.dtype, device,
                                  profile, plan.max_model_len))
    inner = runner_over(kv_of(pages))
    runner: Runner = inner
    if graphs:
        from server.runner.cuda_graphs import AR_MAX_GRAPH_ROWS, GraphedRunner

        tokens = cfg.scheduler.max_num_batched_tokens
        max_blocks = (tokens // plan.attn_block if plan.block_size is not None
                      else min(tokens, AR_MAX_GRAPH_ROWS))
        runner = GraphedRunner(inner, max_blocks, plan.max_model_len)
    log.info("rank %d/%d runner: %d KV pages of %d, moe %s, attention %s, CUDA graphs %s",
             tp.rank, tp.size, pages, plan.page_size, moe, attention.name,
             "on" if graphs else "off")
    return runner
