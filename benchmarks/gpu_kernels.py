"""GPU kernel benchmarks (CUDA only; `--help` works anywhere).

- acceptance: fused Triton acceptance over [S, 32, V] bf16 logits (LLaDA2.0-mini vocab);
  achieved bandwidth = logits bytes / time, next to the device's measured copy bandwidth
  (target >= 80%). The torch reference is timed on the fp32 logits it needs.
- moe: Triton grouped GEMM at the mini expert shape (E 256, top-8, H 2048, I 512) for a range
  of token counts; TFLOP/s vs the measured bf16 matmul peak, and weight bytes touched / time vs
  the copy bandwidth (small batches are bandwidth-bound). The torch loop is timed beside it.

    python benchmarks/gpu_kernels.py --out benchmarks/results/gpu_kernels_<date>.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def bench_acceptance(rows: list[int], vocab: int, bw: float) -> list[dict]:
    import torch

    from benchmarks.gpu_common import cuda_time
    from unmask_kernels.acceptance.ref import accept_blocks
    from unmask_kernels.acceptance.triton_accept import fused_accept

    out = []
    B, mask = 32, vocab - 289
    for S in rows:
        logits = torch.randn(S, B, vocab, device="cuda", dtype=torch.bfloat16) * 4
        ids = torch.full((S, B), mask, device="cuda")
        und = torch.ones(S, B, dtype=torch.bool, device="cuda")
        thr = torch.full((S,), 0.95, device="cuda")
        k = torch.ones(S, dtype=torch.long, device="cuda")
        t = cuda_time(lambda: fused_accept(logits, ids.clone(), und, thr, k, mask))  # noqa: B023
        f32 = logits.float()
        t_ref = cuda_time(lambda: accept_blocks(f32.clone(), ids.clone(), und, thr, k, mask),  # noqa: B023
                          iters=10)
        nbytes = logits.numel() * logits.element_size()
        out.append({"S": S, "logits_MiB": nbytes / 2**20, "triton_us": t * 1e6,
                    "achieved_GBps": nbytes / t / 1e9, "fraction_of_copy_bw": nbytes / t / bw,
                    "torch_ref_us_fp32_input": t_ref * 1e6})
    return out


def bench_moe(tokens: list[int], peak: float, bw: float) -> list[dict]:
    import torch

    from benchmarks.gpu_common import cuda_time
    from unmask_kernels.moe.ref import experts_loop
    from unmask_kernels.moe.triton_moe import grouped_experts

    E, k, H, inter = 256, 8, 2048, 512
    w13 = torch.randn(E, 2 * inter, H, device="cuda", dtype=torch.bfloat16) * H ** -0.5
    w2 = torch.randn(E, H, inter, device="cuda", dtype=torch.bfloat16) * inter ** -0.5
    out = []
    for T in tokens:
        x = torch.randn(T, H, device="cuda", dtype=torch.bfloat16)
        ids = torch.rand(T, E, device="cuda").topk(k, dim=-1).indices
        w = torch.rand(T, k, device="cuda")
        t = cuda_time(lambda: grouped_experts(x, ids, w, w13, w2))  # noqa: B023
        t_ref = cuda_time(lambda: experts_loop(x, ids, w, w13, w2), iters=10)  # noqa: B023
        flops = T * k * 6 * H * inter
        touched = int(torch.unique(ids).numel())
        wbytes = touched * 3 * H * inter * 2
        out.append({"tokens": T, "experts_touched": touched, "triton_us": t * 1e6,
                    "TFLOPs": flops / t / 1e12, "fraction_of_bf16_peak": flops / t / peak,
                    "weight_GBps": wbytes / t / 1e9, "fraction_of_copy_bw": wbytes / t / bw,
                    "torch_loop_us": t_ref * 1e6})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1,8,32,128", help="sequences S of [S, 32, V] logits")
    ap.add_argument("--vocab", type=int, default=157184)
    ap.add_argument("--tokens", default="1,8,32,256,1024,4096,16384",
                    help="MoE token counts")
    ap.add_argument("--only", choices=["acceptance", "moe"], default=None)
    ap.add_argument("--out", default=None, help="write the JSON result here too")
    args = ap.parse_args()
    import torch

    from benchmarks.gpu_common import bf16_peak, copy_bandwidth, header, write

    if not torch.cuda.is_available():
        print("gpu_kernels.py needs CUDA", file=sys.stderr)
        return 2
    bw, peak = copy_bandwidth(), bf16_peak()
    result = {**header(), "copy_bandwidth_GBps": bw / 1e9, "bf16_peak_TFLOPs": peak / 1e12}
    if args.only in (None, "acceptance"):
        result["acceptance"] = bench_acceptance([int(s) for s in args.rows.split(",")],
                                                args.vocab, bw)
    if args.only in (None, "moe"):
        result["moe"] = bench_moe([int(t) for t in args.tokens.split(",")], peak, bw)
    write(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
