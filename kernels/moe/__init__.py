"""Routed-expert computation (SwiGLU experts over top-k assignments): torch per-expert loop
reference and Triton grouped GEMM, registered under op "moe". Signature of every
implementation: (x [T, H], ids [T, k] long, weights [T, k] fp32, w13 [E, 2I, H], w2 [E, H, I])
→ y [T, H] in x's dtype (expert outputs weighted and summed in fp32)."""

from __future__ import annotations

from typing import Any

from ..registry import register


def _torch() -> Any:
    from .ref import experts_loop

    return experts_loop


def _triton() -> Any:
    from .triton_moe import grouped_experts

    return grouped_experts


register("moe", "torch", _torch)
register("moe", "triton", _triton)
