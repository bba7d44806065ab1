"""Confidence-threshold acceptance of denoised blocks: torch reference and fused Triton kernel,
registered under op "acceptance". Every implementation has `ref.accept_blocks`'s signature."""

from __future__ import annotations

from ..registry import register

register("acceptance", "torch", "unmask_kernels.acceptance.ref:accept_blocks")
register("acceptance", "triton", "unmask_kernels.acceptance.triton_accept:accept_blocks")
