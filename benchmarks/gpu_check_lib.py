"""The GPU check's measuring tools (benchmarks/gpu_check.py runs them): CUDA-event timing, the
measured ceilings (copy bandwidth, matmul peak), the analytic roofline of a step, and what a
torch profile says (kernel table, attention backend, host syncs)."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from the source tree
    sys.path.insert(0, str(ROOT))

# NVIDIA H200 SXM datasheet: 4.8 TB/s HBM3e, 989 TFLOP/s dense BF16 (1,979 with sparsity).
DATASHEET = {"H200": {"hbm_TBps": 4.8, "bf16_dense_TFLOPs": 989.0}}
TARGETS = {"step_fraction_of_roofline": 0.6, "acceptance_fraction_of_copy_bw": 0.8}
SECTIONS = ("env", "peaks", "kernels", "graphs_vs_eager", "diffusion", "diffusion_eager", "ar",
            "profiles", "pytest", "install")
ORDINARY_IDS = 700  # prompt ids below the tiny tokenizer's special ids (776..): no mask or EOS
PROFILE_FILE = "profiles.txt"
TOP_KERNELS = 25



# -- timing and ceilings -----------------------------------------------------------------------
def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], Any], device: str, iters: int = 20, warmup: int = 3) -> float:
    """Median seconds per call: CUDA events on a GPU, the wall clock on a CPU."""
    import torch

    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device: str, nbytes: int) -> float:
    """Bytes/s of a device copy, read + write counted (what a streaming kernel can reach)."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / time_fn(lambda: dst.copy_(src), device)


def matmul_peak(device: str, n: int, dtype: Any) -> float:
    """FLOP/s of a square matmul in `dtype` (measured, not the datasheet)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / time_fn(lambda: a @ b, device)


# -- the roofline ------------------------------------------------------------------------------
def experts_touched(num_experts: int, top_k: int, tokens: int) -> float:
    """Expected distinct experts chosen by `tokens` tokens, top_k each, uniform routing."""
    if num_experts <= 0 or tokens <= 0:
        return 0.0
    return num_experts * (1 - (1 - top_k / num_experts) ** tokens)


def roofline(cfg: Any, queries: list[int], keys: list[int], logit_rows: int, wbytes: int,
             bw: float, peak: float) -> dict[str, Any]:
    """One forward: `queries[i]` rows of sequence i attending to `keys[i]` keys each (their
    last query row's; block-causal rows of one block all see the same keys), `logit_rows`
    rows of logits; `wbytes` bytes per weight and KV element (the model dtype)."""
    H, V, L = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    E, k, mi = cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size
    T = sum(queries)
    moe_layers = sum(1 for i in range(L) if cfg.is_moe_layer(i))
    dense_layers = L - moe_layers
    attn = (nh + 2 * nkv) * hd * H + nh * hd * H  # weights per layer
    dense = 3 * H * cfg.intermediate_size
    shared = 3 * H * mi * cfg.num_shared_experts
    expert = 3 * H * mi
    touched = experts_touched(E, k, T)
    weights = (wbytes * (L * attn + dense_layers * dense + moe_layers * (shared + touched * expert)
                         + V * H + T * H) + 4 * moe_layers * E * H)  # router fp32
    kv_tok = 2 * L * nkv * hd * wbytes  # K and V of one token, every layer
    kv = kv_tok * (sum(keys) + T)  # read every key once per sequence; write this step's
    logits = 2 * wbytes * logit_rows * V
    per_token = 2 * (L * attn + dense_layers * dense + moe_layers * (shared + k * expert + E * H))
    attn_flops = 4 * L * nh * hd * sum(q * kk for q, kk in zip(queries, keys, strict=True))
    flops = T * per_token + attn_flops + 2 * logit_rows * H * V
    nbytes = weights + kv + logits
    t_mem, t_flop = nbytes / bw, flops / peak
    return {"tokens": T, "bytes_GB": nbytes / 1e9, "weights_GB": weights / 1e9,
            "kv_GB": kv / 1e9, "logits_GB": logits / 1e9, "GFLOP": flops / 1e9,
            "experts_touched_per_layer": touched, "roofline_ms": max(t_mem, t_flop) * 1e3,
            "bound": "memory" if t_mem >= t_flop else "compute"}


# -- profiler ----------------------------------------------------------------------------------
def kernel_table(prof: Any, device: str) -> list[dict[str, Any]]:
    """Top kernels by total device time (CUDA), or top CPU ops by self time (CPU)."""
    from torch.autograd import DeviceType

    if device == "cuda":
        agg: dict[str, list[float]] = {}
        for e in prof.events():
            if e.device_type != DeviceType.CUDA:
                continue
            us = float(e.time_range.elapsed_us())
            agg.setdefault(e.name, []).append(us)
        rows = [{"name": n, "calls": len(v), "total_us": sum(v), "avg_us": sum(v) / len(v)}
                for n, v in agg.items()]
    else:
        rows = [{"name": a.key, "calls": a.count, "total_us": float(a.self_cpu_time_total),
                 "avg_us": float(a.self_cpu_time_total) / max(1, a.count)}
                for a in prof.key_averages()]
    rows.sort(key=lambda r: -r["total_us"])
    total = sum(r["total_us"] for r in rows) or 1.0
    for r in rows:
        r["share"] = r["total_us"] / total
    return rows


# aten SDPA ops (eager steps) and kernel-name fragments (also inside graph replays) → backend
SDPA_OPS = {"_scaled_dot_product_flash_attention_for_cpu": "cpu flash",
            "_scaled_dot_product_flash_attention": "flash",
            "_scaled_dot_product_efficient_attention": "mem_efficient",
            "_scaled_dot_product_cudnn_attention": "cudnn",
            "_scaled_dot_product_attention_math": "math"}
ATTENTION_KERNELS = (("paged-triton", ("_attn", "_combine")),
                     ("flashinfer", ("flashinfer", "batchprefill", "batchdecode")),
                     ("flash", ("flash_fwd", "pytorch_flash")),
                     ("mem_efficient", ("fmha_cutlass", "efficient_attention", "mem_eff")),
                     ("cudnn", ("cudnn_generated_fort_native_sdpa", "cudnn_sdpa", "cudnn_fmha")))


def attention_evidence(names: list[str]) -> dict[str, Any]:
    """Which attention implementation ran, from the op and kernel names of a profile."""
    kinds: list[str] = []
    ops = sorted({n for n in names if "scaled_dot_product" in n})
    for op in ops:
        kind = next((k for o, k in SDPA_OPS.items() if op.removeprefix("aten::") == o), None)
        if kind and kind not in kinds:
            kinds.append(kind)
    low = {n.lower() for n in names}
    for kind, frags in ATTENTION_KERNELS:
        if kind not in kinds and any(f in n for n in low for f in frags):
            kinds.append(kind)
    kernels = sorted({n[:100] for n in names if any(f in n.lower() for f in (
        "attention", "fmha", "flash", "sdpa", "softmax"))})[:8]
    return {"kinds": kinds or ["none recognised (math path: bmm + softmax kernels?)"],
            "sdpa_ops": ops, "attention_like": kernels}


def profile_steps(engine: Any, device: str, steps: int) -> tuple[list[dict[str, Any]], str,
                                                                   dict[str, Any], float]:
    """(table rows, the profiler's own table text, attention evidence, wall seconds)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    sync(device)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for _ in range(steps):
            engine.step()
        sync(device)
    wall = time.perf_counter() - t0
    rows = kernel_table(prof, device)
    sort = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    try:
        text = prof.key_averages().table(sort_by=sort, row_limit=TOP_KERNELS)
    except Exception:  # noqa: BLE001 - an older profiler's key name
        text = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=TOP_KERNELS)
    names = [r["name"] for r in rows] + [e.name for e in prof.events()]
    return rows, text, attention_evidence(names), wall


def count_syncs(engine: Any, device: str) -> dict[str, Any]:
    """Synchronizing CUDA calls in one `engine.step()` (torch's sync debug mode warnings; the
    step's read is an event wait on a pinned copy, which it does not flag) and the step's
    counted round trips (`server.transfer.read`/`read_later`)."""
    import warnings

    import torch

    from server.transfer import ROUND_TRIPS

    if device != "cuda":
        return {"status": "skipped", "reason": "torch.cuda.set_sync_debug_mode needs CUDA"}
    before = ROUND_TRIPS.count
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            engine.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    msgs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    return {"status": "ok", "syncs": len(msgs), "round_trips": ROUND_TRIPS.count - before,
            "examples": sorted(set(msgs))[:3]}
