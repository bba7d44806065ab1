"""`build_mode`: the decoding mode of a `StartupPlan`, with its acceptance kernel chosen once."""

from __future__ import annotations

from server.config import EngineConfig
from server.decoding.modes import Autoregressive, BlockDiffusion, DecodeMode
from server.startup import StartupPlan
from unmask_kernels.registry import resolve


def build_mode(cfg: EngineConfig, plan: StartupPlan) -> tuple[DecodeMode, str]:
    """(mode, acceptance backend name); AR decoding has no acceptance kernel ("torch")."""
    eos = frozenset(plan.specials.eos_ids)
    if plan.block_size is None:
        return Autoregressive(plan.page_size, eos), "torch"
    assert plan.specials.mask_id is not None  # plan_startup refuses a diffusion model without
    name, accept = resolve("acceptance", cfg.acceptance_backend, plan.device.type)
    return BlockDiffusion(plan.block_size, plan.specials.mask_id, cfg.diffusion.threshold,
                          plan.editing, eos, plan.max_post_steps, accept,
                          cfg.diffusion.simulate_tpf), name
