"""Routed experts as two Triton grouped GEMMs over expert-sorted assignments.

Layout (built on the device by `align`, no host sync): the T*k assignments are sorted by
expert and each expert's run is padded to a multiple of BM rows, so every BM-row tile belongs
to one expert (`tile_expert`; E marks a tile past the end). Pad rows hold the sentinel N.
1. `_gate_up`: tile rows x[token] @ w13[e]^T for the gate and up halves at once, SwiGLU fused
   in the epilogue → h [rows, NI] (x.dtype). Fusing saves writing and re-reading [rows, 2*NI].
2. `_down`: h @ w2[e]^T, times the assignment's router weight, atomically added in fp32 into
   y [T, H] (the reference's fp32 weighted sum), cast back once.
Rounding follows the reference: each GEMM output is rounded to x.dtype before use. fp32 inputs
(and every dtype off CUDA, i.e. under the interpreter) use exact fp32 dots (no TF32)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gate_up(x_ptr, w13_ptr, h_ptr, slot_ptr, tile_expert_ptr, N, H, NI, E, K,
             sx, sw_e, sw_n, sh, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
             IEEE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(tile_expert_ptr + pid_m)
    if e < E:
        rows = pid_m * BM + tl.arange(0, BM)
        a = tl.load(slot_ptr + rows)  # [BM] assignment index, N = pad
        live = a < N
        tok = tl.where(live, a // K, 0).to(tl.int64)
        cols = pid_n * BN + tl.arange(0, BN)
        c_ok = cols < NI
        w_base = w13_ptr + e.to(tl.int64) * sw_e
        acc_g = tl.zeros((BM, BN), dtype=tl.float32)
        acc_u = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, H, BK):
            ks = k0 + tl.arange(0, BK)
            k_ok = ks < H
            xa = tl.load(x_ptr + tok[:, None] * sx + ks[None, :],
                         mask=live[:, None] & k_ok[None, :], other=0.0)  # [BM, BK]
            wm = k_ok[:, None] & c_ok[None, :]
            wg = tl.load(w_base + cols[None, :] * sw_n + ks[:, None], mask=wm, other=0.0)
            wu = tl.load(w_base + (cols[None, :] + NI) * sw_n + ks[:, None], mask=wm, other=0.0)
            if IEEE:  # fp32 weights, or the interpreter (its bf16 dot is wrong): exact fp32
                xa, wg, wu = xa.to(tl.float32), wg.to(tl.float32), wu.to(tl.float32)
                acc_g += tl.dot(xa, wg, input_precision="ieee")
                acc_u += tl.dot(xa, wu, input_precision="ieee")
            else:
                acc_g += tl.dot(xa, wg)
                acc_u += tl.dot(xa, wu)
        dt = h_ptr.dtype.element_ty
        g = acc_g.to(dt).to(tl.float32)
        u = acc_u.to(dt).to(tl.float32)
        act = (g * tl.sigmoid(g)).to(dt).to(tl.float32)
        out = (act * u).to(dt)
        tl.store(h_ptr + rows[:, None].to(tl.int64) * sh + cols[None, :], out,
                 mask=live[:, None] & c_ok[None, :])


@triton.jit
def _down(h_ptr, w2_ptr, y_ptr, slot_ptr, tile_expert_ptr, wt_ptr, N, H, NI, E, K,
          sh, sw_e, sw_n, sy, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
          IEEE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(tile_expert_ptr + pid_m)
    if e < E:
        rows = pid_m * BM + tl.arange(0, BM)
        a = tl.load(slot_ptr + rows)
        live = a < N
        tok = tl.where(live, a // K, 0).to(tl.int64)
        wt = tl.load(wt_ptr + a, mask=live, other=0.0)  # [BM] fp32 router weight
        cols = pid_n * BN + tl.arange(0, BN)
        c_ok = cols < H
        w_base = w2_ptr + e.to(tl.int64) * sw_e
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, NI, BK):
            ks = k0 + tl.arange(0, BK)
            k_ok = ks < NI
            ha = tl.load(h_ptr + rows[:, None].to(tl.int64) * sh + ks[None, :],
                         mask=live[:, None] & k_ok[None, :], other=0.0)  # [BM, BK]
            wd = tl.load(w_base + cols[None, :] * sw_n + ks[:, None],
                         mask=k_ok[:, None] & c_ok[None, :], other=0.0)  # [BK, BN]
            if IEEE:
                acc += tl.dot(ha.to(tl.float32), wd.to(tl.float32), input_precision="ieee")
            else:
                acc += tl.dot(ha, wd)
        o = acc.to(h_ptr.dtype.element_ty).to(tl.float32) * wt[:, None]
        tl.atomic_add(y_ptr + tok[:, None] * sy + cols[None, :], o,
                      mask=live[:, None] & c_ok[None, :])


def align(ids: torch.Tensor, num_experts: int, bm: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [T, k] → (slot [R] int32: assignment per padded row (N = pad), tile_expert [R/BM]
    int32: expert of each tile (E = unused)). R is a static bound: no host sync."""
    flat = ids.flatten()  # [N]
    N, E, dev = flat.numel(), num_experts, ids.device
    order = flat.argsort(stable=True)  # sorted row → assignment
    # [E]; not bincount: on CUDA it reads the max id back to the host (breaks graph capture)
    counts = torch.zeros(E, dtype=torch.long, device=dev).scatter_add_(
        0, flat, torch.ones_like(flat))
    padded = (counts + bm - 1) // bm * bm
    pend = padded.cumsum(0)
    pstart = pend - padded
    start = counts.cumsum(0) - counts
    sorted_e = flat[order]
    pos = pstart[sorted_e] + torch.arange(N, device=dev) - start[sorted_e]
    rows = triton.cdiv(N + min(N, E) * (bm - 1), bm) * bm
    slot = torch.full((rows,), N, dtype=torch.int32, device=dev)
    slot[pos] = order.to(torch.int32)
    tiles = torch.arange(rows // bm, device=dev) * bm
    tile_expert = torch.searchsorted(pend, tiles, right=True).to(torch.int32)
    return slot, tile_expert


def grouped_experts(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                    w13: torch.Tensor, w2: torch.Tensor, bm: int | None = None,
                    bn: int = 64, bk: int = 64) -> torch.Tensor:
    T, K = ids.shape
    E, H, inter = w13.shape[0], x.shape[1], w2.shape[2]
    N = T * K
    if N == 0:
        return torch.zeros_like(x)
    x, w13, w2 = x.contiguous(), w13.contiguous(), w2.contiguous()
    bm = bm or (16 if N <= 4 * E else 64)  # decode: ~1 row per expert, small tiles
    slot, tile_expert = align(ids, E, bm)
    h = torch.empty(slot.numel(), inter, dtype=x.dtype, device=x.device)  # [R, NI]
    ieee = x.dtype == torch.float32 or x.device.type != "cuda"
    tiles = tile_expert.numel()
    _gate_up[(tiles, triton.cdiv(inter, bn))](
        x, w13, h, slot, tile_expert, N, H, inter, E, K, x.stride(0), w13.stride(0),
        w13.stride(1), h.stride(0), BM=bm, BN=bn, BK=bk, IEEE=ieee)
    y = torch.zeros(T, H, dtype=torch.float32, device=x.device)
    wt = weights.float().contiguous().flatten()  # [N]
    _down[(tiles, triton.cdiv(H, bn))](
        h, w2, y, slot, tile_expert, wt, N, H, inter, E, K, h.stride(0), w2.stride(0),
        w2.stride(1), y.stride(0), BM=bm, BN=bn, BK=bk, IEEE=ieee)
    return y.to(x.dtype)
