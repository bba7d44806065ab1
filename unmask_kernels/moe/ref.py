"""Torch reference of the routed experts: tokens sorted by expert, one matmul pair per expert."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def experts_loop(
    x: torch.Tensor,  # [T, H]
    ids: torch.Tensor,  # [T, k] long
    weights: torch.Tensor,  # [T, k] fp32
    w13: torch.Tensor,  # [E, 2I, H]: gate rows then up rows
    w2: torch.Tensor,  # [E, H, I]
) -> torch.Tensor:  # [T, H] x.dtype
    T, k = ids.shape
    inter = w2.shape[2]
    flat = ids.flatten()  # [T*k]
    order = flat.argsort(stable=True)
    token = order // k  # source row of each sorted assignment
    counts = torch.bincount(flat, minlength=w13.shape[0]).tolist()
    xs = x[token]  # [T*k, H]
    out = torch.empty_like(xs)
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        gate, up = F.linear(xs[start : start + n], w13[e]).split(inter, dim=-1)
        out[start : start + n] = F.linear(F.silu(gate) * up, w2[e])
        start += n
    # expert outputs weighted and summed in fp32, then cast back (spec §5 precision)
    weighted = out.float() * weights.flatten()[order].unsqueeze(1)
    y = torch.zeros(T, x.shape[1], dtype=torch.float32, device=x.device)
    return y.index_add_(0, token, weighted).to(x.dtype)
