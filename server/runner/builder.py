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
from server.runner.model_runner import ModelRunner, Publish, Runner
from server.startup import StartupPlan, kv_pages
from unmask_kernels.registry import resolve

log = logging.getLogger(__name__)


def build_runner(cfg: EngineConfig, plan: StartupPlan, tp: TPGroup = SINGLE,
                 device: torch.device | None = None, publish: Publish | None = None) -> Runner:
    """This rank's runner on `device` (default: the plan's). The KV pool is sized after the
    weights are loaded; under tensor parallelism the ranks agree on the smallest pool, so page
    ids mean the same on every rank. `publish` (rank 0 of several) sends each step's inputs."""
    device = device or plan.device
    mcfg = plan.mcfg
    attention = create_backend(cfg.attention_backend, device)
    moe, experts = resolve("moe", cfg.moe_backend, device.type)
    model = load_model(plan.model_dir, mcfg, plan.dtype, device, plan.max_model_len, tp, experts,
                       cfg.load_format)
    pages = tp.agree_min(kv_pages(cfg, mcfg, tp.size, plan.page_size, plan.dtype, device))
    kv = KVCache(mcfg.num_hidden_layers, pages, plan.page_size, local_kv_heads(mcfg, tp.size),
                 mcfg.head_dim, plan.dtype, device)
    never = plan.specials.mask_id if plan.block_size is not None else None
    runner: Runner = ModelRunner(model, kv, attention, plan.attn_block, device, publish, never)
    graphs = (plan.block_size is not None and device.type == "cuda" and not cfg.enforce_eager
              and tp.size == 1)
    if graphs:
        from server.runner.cuda_graphs import GraphedDenoiseRunner

        assert isinstance(runner, ModelRunner) and plan.block_size is not None
        runner = GraphedDenoiseRunner(runner, plan.block_size, plan.max_model_len)
    log.info("rank %d/%d runner: %d KV pages of %d, moe %s, attention %s, denoise CUDA graphs "
             "%s", tp.rank, tp.size, pages, plan.page_size, moe, attention.name,
             "on" if graphs else "off")
    return runner
