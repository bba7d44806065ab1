"""Confidence-threshold acceptance of denoised blocks: torch reference and fused Triton kernel,
registered under op "acceptance". Every implementation has `ref.accept_blocks`'s signature."""

from __future__ import annotations

from typing import Any

from ..registry import register


def _torch() -> Any:
    from .ref import accept_blocks

    return accept_blocks


def _triton() -> Any:
    from .triton_accept import accept_blocks

    return accept_blocks


register("acceptance", "torch", _torch)
register("acceptance", "triton", _triton)
