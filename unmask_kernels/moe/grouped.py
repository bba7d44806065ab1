"""Routed experts as two `torch._grouped_mm` calls over expert-sorted assignments (the torch
backend's CUDA path), with the reference's rounding and fp32 weighted sum.

Same steps as `experts_loop` without its per-expert loop or host read of the counts: the T*k
assignments are sorted by expert on the device, group ends come from `searchsorted` (int32,
no `bincount`, which reads a max back on CUDA), and each GEMM runs all experts at once; an
empty expert is a zero-size group. `torch._grouped_mm` takes the fast CUTLASS path only for
bf16 on sm90/sm100; elsewhere it falls back to a loop that copies the offsets to the host, so
`experts_torch` (the "torch" backend on CUDA) uses it only there and keeps the loop otherwise."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .ref import experts_loop


def experts_grouped(
    x: torch.Tensor,  # [T, H]
    ids: torch.Tensor,  # [T, k] long
    weights: torch.Tensor,  # [T, k] fp32
    w13: torch.Tensor,  # [E, 2I, H]: gate rows then up rows
    w2: torch.Tensor,  # [E, H, I]
) -> torch.Tensor:  # [T, H] x.dtype
    T, k = ids.shape
    E, inter = w13.shape[0], w2.shape[2]
    if T * k == 0:
        return torch.zeros_like(x)
    flat = ids.flatten()  # [N]
    order = flat.argsort(stable=True)  # sorted row → assignment
    token = order // k  # source row of each sorted assignment
    experts = torch.arange(E, device=ids.device, dtype=flat.dtype)
    ends = torch.searchsorted(flat[order], experts, right=True, out_int32=True)  # [E] int32
    xs = x[token]  # [N, H]
    gate, up = torch._grouped_mm(xs, w13.transpose(1, 2), offs=ends).split(inter, dim=-1)
    out = torch._grouped_mm(F.silu(gate) * up, w2.transpose(1, 2), offs=ends)  # [N, H]
    # expert outputs weighted and summed in fp32, then cast back (as the reference)
    weighted = out.float() * weights.flatten()[order].unsqueeze(1)
    y = torch.zeros(T, x.shape[1], dtype=torch.float32, device=x.device)
    return y.index_add_(0, token, weighted).to(x.dtype)


def grouped_mm_fast(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> bool:
    """Whether `experts_grouped` runs `torch._grouped_mm`'s CUDA kernel (no host sync): bf16 on
    sm90/sm100, weights' inner strides 1 and outer strides multiples of 16 bytes (H and I
    multiples of 8). Host attributes only."""
    if not (x.dtype == w13.dtype == w2.dtype and grouped_mm_capturable(
            x.dtype, x.device, x.shape[1], w2.shape[2])):
        return False
    return (w13.stride(2) == 1 and w2.stride(2) == 1 and w13.stride(1) % 8 == 0
            and w2.stride(1) % 8 == 0)


def grouped_mm_capturable(dtype: torch.dtype, device: torch.device, hidden: int,
                          inter: int) -> bool:
    """Whether the "torch"/"grouped" experts of a model of this dtype and shape run the
    `torch._grouped_mm` kernel on `device` (so a CUDA graph can capture them): bf16, sm90/sm100,
    hidden and expert-intermediate sizes multiples of 8 (with contiguous stacked weights)."""
    return (device.type == "cuda" and dtype == torch.bfloat16 and hidden % 8 == 0
            and inter % 8 == 0 and _fast_device(device.index or 0))


@functools.cache
def _fast_device(index: int) -> bool:
    return hasattr(torch, "_grouped_mm") and torch.cuda.get_device_capability(index)[0] in (9, 10)


def experts_torch(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, w13: torch.Tensor,
                  w2: torch.Tensor) -> torch.Tensor:
    """The "torch" backend on CUDA: grouped GEMMs where `torch._grouped_mm` has its kernel,
    else the per-expert loop. (On CPU the registry gives `experts_loop` itself.)"""
    if grouped_mm_fast(x, w13, w2):
        return experts_grouped(x, ids, weights, w13, w2)
    return experts_loop(x, ids, weights, w13, w2)
