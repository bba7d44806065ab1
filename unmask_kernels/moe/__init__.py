"""Routed-expert computation (SwiGLU experts over top-k assignments): torch per-expert loop
reference, torch grouped GEMM (`torch._grouped_mm`) and Triton grouped GEMM, registered under
op "moe". Signature of every implementation: (x [T, H], ids [T, k] long, weights [T, k] fp32,
w13 [E, 2I, H], w2 [E, H, I]) → y [T, H] in x's dtype (expert outputs weighted and summed in
fp32). "torch" is the loop on CPU (unchanged) and, on CUDA, the grouped GEMM where
`torch._grouped_mm` has its kernel (bf16, sm90/sm100), else the loop."""

from __future__ import annotations

from ..registry import register

register("moe", "torch", "unmask_kernels.moe.ref:experts_loop")
register("moe", "torch", "unmask_kernels.moe.grouped:experts_torch", device_type="cuda")
register("moe", "grouped", "unmask_kernels.moe.grouped:experts_grouped")
register("moe", "triton", "unmask_kernels.moe.triton_moe:grouped_experts")
