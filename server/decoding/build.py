"""`build_mode`: the decoding mode of a `StartupPlan`, with its acceptance kernel chosen once."""

from __future__ import annotations

import torch

from server.config import EngineConfig
from server.decoding.autoregressive import Autoregressive
from server.decoding.canvas_table import CanvasTable
from server.decoding.diffusion import BlockDiffusion
from server.decoding.levenshtein import EditIds
from server.decoding.modes import DecodeMode
from server.startup import StartupPlan
from unmask_kernels.registry import resolve


def build_mode(cfg: EngineConfig, plan: StartupPlan,
               device: torch.device) -> tuple[DecodeMode, str]:
    """(mode, acceptance backend name); AR decoding has no acceptance kernel ("torch").
    `device`: where the logits arrive (the first rank's), home of the diffusion decode state."""
    eos = frozenset(plan.specials.eos_ids)
    if plan.block_size is None:
        return Autoregressive(plan.page_size, eos), "torch"
    sp = plan.specials
    assert sp.mask_id is not None  # plan_startup refuses a diffusion model without one
    name, accept = resolve("acceptance", cfg.acceptance_backend, plan.device.type)
    edits = (EditIds(sp.mask_id, sp.delete_id, sp.split_id)
             if sp.delete_id is not None and sp.split_id is not None else None)
    return BlockDiffusion(plan.block_size, sp.mask_id, cfg.diffusion.threshold,
                          plan.editing, eos, plan.max_post_steps, accept,
                          cfg.diffusion.simulate_tpf, edits,
                          CanvasTable(cfg.scheduler.max_running_requests, plan.block_size,
                                      sp.mask_id, device)), name
