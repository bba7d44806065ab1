"""Per-step latency of the diffusion denoise step (concurrency 1, 8, 32, 128) and of the AR
decode step, each next to its roofline, at the real LLaDA2.0-mini shape with random bf16
weights (CUDA only; `--help` works anywhere).

Roofline of a step = max(bytes touched / measured copy bandwidth, FLOPs / measured bf16 matmul
peak). Bytes: every non-expert weight once (attention, dense layer, shared experts, router, the
full lm_head), the routed experts the step's tokens actually select (counted by a hook on one
untimed step), the KV of every key position each segment attends to, and the fp32 logits
written and read back by acceptance. FLOPs: 2 x weights used per token + attention
(4 x keys x heads x head_dim per query per layer) + lm_head rows. Ratio = roofline / measured
(1.0 = at the roofline; target >= 0.6).

Random weights give ~1 token per forward; `--simulate-tpf 2.55` runs the acceptance oracle
(a fixed commit schedule) and every throughput it prints is labelled "simulated TPF".

    python benchmarks/gpu_step.py --model /tmp/mini --make --out benchmarks/results/x.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_checkpoints(llada: Path, ling: Path) -> None:
    """The mini-shape LLaDA2 checkpoint (written once, ~32 GB) and a Ling-2.0 twin that shares
    its weight files by symlink (same tensor names; only config and specials differ)."""
    from server.tiny import make_tiny_model

    if not (llada / "config.json").exists():
        make_tiny_model(llada, arch="llada2", seed=0, config_of="mini")
    if (ling / "config.json").exists():
        return
    tmp = make_tiny_model(ling.with_name(ling.name + "-cfg"), arch="ling2", seed=0,
                          config_of="mini", overrides={"num_hidden_layers": 1})
    ling.mkdir(parents=True, exist_ok=True)
    for f in tmp.iterdir():
        if not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
            shutil.copy(f, ling / f.name)
    cfg = json.loads((ling / "config.json").read_text())
    cfg["num_hidden_layers"] = json.loads((llada / "config.json").read_text())[
        "num_hidden_layers"]
    (ling / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in llada.iterdir():
        if f.name.endswith(".safetensors") or f.name == "model.safetensors.index.json":
            (ling / f.name).symlink_to(f.resolve())
    shutil.rmtree(tmp)


def roofline(cfg: Any, segments: list[tuple[int, int]], expert_touch: list[int],
             bw: float, peak: float) -> dict[str, float]:
    """segments: (query rows, keys attended) per sequence; expert_touch: distinct routed
    experts per MoE layer in this step."""
    H, V, L = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    mi, k = cfg.moe_intermediate_size, cfg.num_experts_per_tok
    attn_w = ((nh + 2 * nkv) * hd * H + nh * hd * H)  # params per layer
    dense_layers = sum(0 if cfg.is_moe_layer(i) else 1 for i in range(L))
    moe_layers = L - dense_layers
    shared = 3 * H * mi * cfg.num_shared_experts
    tokens = sum(q for q, _ in segments)
    rows = tokens  # diffusion: every row of a block needs logits; AR: one row per segment
    w_bytes = 2 * (L * attn_w + dense_layers * 3 * H * cfg.intermediate_size
                   + moe_layers * shared + V * H) + 4 * moe_layers * cfg.num_experts * H
    e_bytes = 2 * 3 * H * mi * sum(expert_touch)
    kv_bytes = 2 * 2 * L * nkv * hd * sum(keys for _, keys in segments)
    logit_bytes = 2 * 4 * rows * V
    per_tok = 2 * (L * attn_w + dense_layers * 3 * H * cfg.intermediate_size
                   + moe_layers * (shared + k * 3 * H * mi))
    attn_flops = 4 * L * nh * hd * sum(q * keys for q, keys in segments)
    flops = tokens * per_tok + attn_flops + 2 * rows * H * V
    total = w_bytes + e_bytes + kv_bytes + logit_bytes
    t = max(total / bw, flops / peak)
    return {"bytes_GB": total / 1e9, "weights_GB": (w_bytes + e_bytes) / 1e9,
            "kv_GB": kv_bytes / 1e9, "GFLOP": flops / 1e9, "roofline_ms": t * 1e3,
            "bound": "memory" if total / bw >= flops / peak else "compute"}


def count_experts(engine: Any) -> tuple[list[int], Any]:
    """Hook every router for one step: distinct experts selected per MoE layer."""
    import torch

    from server.model.moe import Router

    touched: list[int] = []
    handles = []

    def hook(_m: Any, _i: Any, out: tuple[torch.Tensor, torch.Tensor]) -> None:
        touched.append(int(torch.unique(out[0]).numel()))

    for m in engine.runner.model.modules():
        if isinstance(m, Router):
            handles.append(m.register_forward_hook(hook))
    return touched, handles


def measure(engine: Any, conc: int, prompt_len: int, steps: int, mode: str, bw: float,
            peak: float, seed: int) -> dict[str, Any]:
    import torch

    from server.core import GenerateRequest, SamplingParams

    g = torch.Generator().manual_seed(seed)
    block = engine.info.block_size
    for i in range(conc):
        # ids below the tiny tokenizer's special ids (776..785): no mask or eos in prompts
        ids = tuple(torch.randint(0, 700, (prompt_len,), generator=g).tolist())
        engine.add_request(GenerateRequest(f"b{conc}-{i}", ids, SamplingParams(
            max_tokens=engine.max_model_len - prompt_len - 2 * block, ignore_eos=True,
            temperature=0.0)))
    rows = conc * (block if mode == "diffusion" else 1)
    # prefill (eager) until every sequence is in its steady step shape
    for _ in range(200):
        s = engine.step().stats
        if s.num_seqs == conc and s.num_tokens == rows:
            break
    touched, handles = count_experts(engine)
    engine.step()
    for h in handles:
        h.remove()
    times, steady, tokens = [], [], 0
    for _ in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        s = engine.step().stats
        dt = time.perf_counter() - t0  # the step ends in a host read of the commits
        times.append(dt)
        tokens += s.tokens_committed
        if s.num_seqs == conc and s.num_tokens == rows:
            steady.append(dt)
    for rid in list(engine.scheduler.live):
        engine.abort(rid)
    ctx = prompt_len + 64  # keys attended, approximately, in the timed window
    segs = [(rows // conc, ctx + (block if mode == "diffusion" else 1))] * conc
    roof = roofline(engine.runner.model.cfg, segs, touched, bw, peak)
    med = statistics.median(steady) if steady else float("nan")
    return {"mode": mode, "concurrency": conc, "prompt_len": prompt_len,
            "steady_steps": len(steady), "step_ms_median": med * 1e3,
            "step_ms_all_median": statistics.median(times) * 1e3,
            "roofline": roof, "fraction_of_roofline": roof["roofline_ms"] / (med * 1e3),
            "tokens_per_forward": tokens / max(1, conc * len(times)),
            "output_tokens_per_s": tokens / sum(times), "experts_touched": touched}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/tmp/unmask-mini", help="LLaDA2 mini-shape dir")
    ap.add_argument("--make", action="store_true",
                    help="write the mini-shape checkpoints (and the Ling twin) if missing")
    ap.add_argument("--concurrency", default="1,8,32,128")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--modes", default="diffusion,ar")
    ap.add_argument("--simulate-tpf", type=float, default=None,
                    help="acceptance oracle: throughput figures are 'simulated TPF'")
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--acceptance-backend", default="auto")
    ap.add_argument("--moe-backend", default="auto")
    ap.add_argument("--attention-backend", default="auto")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    from benchmarks.gpu_common import bf16_peak, copy_bandwidth, header, write
    from server.engine.engine import Engine
    from server.engine.llm import engine_config

    if not torch.cuda.is_available():
        print("gpu_step.py needs CUDA", file=sys.stderr)
        return 2
    llada, ling = Path(args.model), Path(args.model + "-ling")
    if args.make:
        make_checkpoints(llada, ling)
    bw, peak = copy_bandwidth(), bf16_peak()
    result: dict[str, Any] = {**header(), "copy_bandwidth_GBps": bw / 1e9,
                              "bf16_peak_TFLOPs": peak / 1e12, "runs": []}
    if args.simulate_tpf:
        result["note"] = f"simulated TPF {args.simulate_tpf} (acceptance oracle)"
    concs = [int(c) for c in args.concurrency.split(",")]
    for mode in args.modes.split(","):
        engine = Engine(engine_config(
            str(llada if mode == "diffusion" else ling), device="cuda", dtype="bfloat16",
            max_running_requests=max(concs), max_model_len=args.prompt_len + 4096 + 64,
            max_num_batched_tokens=max(8192, max(concs) * 64),
            acceptance_backend=args.acceptance_backend, moe_backend=args.moe_backend,
            attention_backend=args.attention_backend, enforce_eager=args.enforce_eager,
            simulate_tpf=args.simulate_tpf if mode == "diffusion" else None))
        result.setdefault("engine", {})[mode] = str(engine.info)
        for c in concs:
            run = measure(engine, c, args.prompt_len, args.steps, mode, bw, peak, seed=c)
            if args.simulate_tpf and mode == "diffusion":
                run["label"] = f"simulated TPF {args.simulate_tpf}"
            result["runs"].append(run)
            print(f"{mode} c={c}: {run['step_ms_median']:.2f} ms/step, roofline "
                  f"{run['roofline']['roofline_ms']:.2f} ms ({run['roofline']['bound']}), "
                  f"ratio {run['fraction_of_roofline']:.2f}"
                  + (f" [simulated TPF {args.simulate_tpf}]" if run.get("label") else ""),
                  file=sys.stderr)
        del engine
        torch.cuda.empty_cache()
    write(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
