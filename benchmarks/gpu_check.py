"""The GPU validation of issue 18 in one process: what `benchmarks/gpu_check.sh` runs.

At the real LLaDA2.0-mini shape with random weights made on the GPU (`load_format="dummy"`:
no checkpoint on disk, only config.json and generation_config.json in a temporary folder):

- peaks: measured device-to-device copy bandwidth and bf16 matmul peak (the roofline's two
  ceilings), beside the H200 datasheet figures;
- kernels: the acceptance kernel over [S, 32, V] logits in the model dtype vs the copy
  bandwidth (target >= 80 %); the routed-experts kernel vs the bf16 peak and, for its weight
  bytes, the copy bandwidth;
- graphs_vs_eager: an engine with CUDA graphs and one with `enforce_eager=True` (same dummy
  seed, hence the same weights) decode the same greedy requests: tokens compared, and the
  logits of one step; routed experts touched on an eager step (router hooks on the eager
  engine only: hooks never fire inside a graph replay) beside the analytic count;
- diffusion / diffusion_eager / ar: the steady-state step at concurrency 1, 8, 32, 128 (the
  Ling-2.0 twin, arch "ling2", for the AR decode step) against an analytic roofline, with the
  share of graph-replayed steps, host syncs per step (`torch.cuda.set_sync_debug_mode`), which
  attention/SDPA backend ran, and a profiler top-25 kernel table at the lowest and highest
  concurrency.

Roofline of a step = max(bytes / copy bandwidth, FLOPs / matmul peak), both measured. Bytes:
every non-expert weight once (attention, dense MLP, shared experts, fp32 router, lm_head), the
routed experts a step touches (analytic: E·(1 - (1 - k/E)^T) per MoE layer for T tokens under
uniform routing), the KV of every key each sequence attends to plus the KV written, and the
logits in the model dtype (written by lm_head, read by acceptance). FLOPs: 2 x active weights
per token, attention 4·heads·head_dim per (query, key) pair, lm_head. Activations are left
out. Random weights commit about one token per step at threshold 0.95: the step time is what
is measured, not a tokens-per-forward figure of a trained model.

Only torch (and triton for the CUDA kernels) is needed: nothing from server.api, and neither
transformers, tokenizers, safetensors nor tqdm (the test suite checks this). Every section
is timed against one budget; a section that would start past it is recorded as skipped, and
summary.json/summary.md are rewritten after every section, so a run cut short still reports.

    python benchmarks/gpu_check.py --out OUT [--device cpu --tiny] [--budget-s 240]
    python benchmarks/gpu_check.py --out OUT --finalize ...   # (gpu_check.sh) pytest, install
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules below

from gpu_check_lib import (  # noqa: E402
    DATASHEET,
    ORDINARY_IDS,
    PROFILE_FILE,
    SECTIONS,
    TOP_KERNELS,
    attention_evidence,  # noqa: F401 - part of the script's interface (tests)
    copy_bandwidth,
    count_syncs,
    experts_touched,
    matmul_peak,
    profile_steps,
    roofline,
    sync,
    time_fn,
)
from gpu_check_report import finalize, git_commit, write_summary  # noqa: E402


@dataclass
class Plan:
    """What one run measures: the H200 run (mini shape) or the CPU check (tiny shape)."""

    device: str
    tiny: bool
    concurrency: list[int]
    prompt_len: int
    max_model_len: int
    timed_steps: int
    warm_steps: int
    compare_requests: int
    compare_tokens: int
    accept_rows: list[int]
    moe_tokens: list[int]
    copy_bytes: int
    matmul_n: int
    eager_concurrency: list[int] = field(default_factory=list)

    @classmethod
    def make(cls, device: str, tiny: bool) -> Plan:
        conc = [1, 8, 32, 128]
        if device == "cpu":
            return cls(device, tiny, conc, prompt_len=32, max_model_len=512, timed_steps=3,
                       warm_steps=1, compare_requests=2, compare_tokens=40,
                       accept_rows=[1, 8], moe_tokens=[32, 256], copy_bytes=32 << 20,
                       matmul_n=256, eager_concurrency=[1, 128])
        return cls(device, tiny, conc, prompt_len=512, max_model_len=2048, timed_steps=20,
                   warm_steps=3, compare_requests=4, compare_tokens=96,
                   accept_rows=[1, 8, 32, 128], moe_tokens=[32, 256, 1024, 4096],
                   copy_bytes=2 << 30, matmul_n=8192, eager_concurrency=[1, 128])


# -- the check ---------------------------------------------------------------------------------
class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.plan = Plan.make(args.device, args.tiny)
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.budget_s
        self.result: dict[str, Any] = {"meta": self._meta(), "notes": []}
        for s in SECTIONS:
            self.result[s] = {"status": "pending"}
        self.profile_text: list[str] = []
        self.build_s: dict[str, float] = {}  # engine build seconds by "arch-graphs|eager"
        self.tmp = tempfile.TemporaryDirectory(prefix="gpu_check_")
        self.engines: dict[str, Any] = {}
        self.peak: dict[str, float] = {}

    # bookkeeping
    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {msg}", flush=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def _meta(self) -> dict[str, Any]:
        a = self.args
        return {"command": os.environ.get("GPU_CHECK_COMMAND") or " ".join(
                    shlex.quote(x) for x in sys.argv),
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "commit": os.environ.get("GPU_CHECK_COMMIT") or git_commit(),
                "host": platform.node(), "python": platform.python_version(),
                "device_arg": a.device, "shape": "tiny" if a.tiny else "LLaDA2.0-mini",
                "budget_s": a.budget_s}

    def section(self, name: str, fn: Callable[[], dict[str, Any]], need_s: float) -> None:
        if self.left() < need_s:
            self.result[name] = {"status": "skipped", "reason": f"time budget: {self.left():.0f}"
                                 f" s left, section needs about {need_s:.0f} s"}
            self.log(f"{name}: skipped (budget)")
            self.write()
            return
        self.log(f"{name}: start")
        t = time.monotonic()
        try:
            res = fn()
            res.setdefault("status", "ok")
        except Exception as e:  # noqa: BLE001 - record it and go on with the next section
            tb = traceback.format_exc()
            print(tb, flush=True)
            res = {"status": "error", "error": f"{type(e).__name__}: {e}"[:500],
                   "traceback_tail": tb.strip().splitlines()[-6:]}
        res["seconds"] = round(time.monotonic() - t, 1)
        self.result[name] = res
        self.log(f"{name}: {res['status']} in {res['seconds']} s")
        self._free_memory()
        self.write()

    def _free_memory(self) -> None:
        gc.collect()
        if self.plan.device == "cuda":
            import torch

            torch.cuda.empty_cache()

    def write(self) -> None:
        self.result["meta"]["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        write_summary(self.out, self.result)
        if self.profile_text:
            (self.out / PROFILE_FILE).write_text("\n".join(self.profile_text))

    # model folders and engines
    @property
    def torch_dtype(self) -> Any:
        import torch

        return torch.bfloat16 if self.plan.device == "cuda" else torch.float32

    def model_dir(self, arch: str) -> Path:
        from server.tiny.generate import make_tiny_model

        d = Path(self.tmp.name) / arch
        if not (d / "config.json").exists():
            make_tiny_model(d, arch=arch, config_of=None if self.plan.tiny else "mini",
                            weights=False, tokenizer=False,
                            dtype="bfloat16" if self.plan.device == "cuda" else "float32")
        return d

    def engine(self, arch: str, eager: bool) -> Any:
        from server.engine.engine import Engine
        from server.engine.llm import engine_config

        p = self.plan
        cmax = max(p.concurrency)
        pages: int | None = cmax * -(-(p.prompt_len + 256) // 32) + 64
        memory: dict[str, Any] = {}
        if p.device == "cuda" and not eager and arch == "llada2":  # sizes its pool from the
            pages, memory = None, {"gpu_memory_utilization": 0.6}  # memory profile (logged)
        t = time.monotonic()
        e = Engine(engine_config(
            str(self.model_dir(arch)), device=p.device, load_format="dummy",
            dtype="bfloat16" if p.device == "cuda" else "float32", enforce_eager=eager,
            max_model_len=p.max_model_len, num_pages=pages, max_running_requests=cmax,
            max_num_batched_tokens=max(8192, 2 * 32 * cmax), seed=0, **memory))
        self.build_s[f"{arch}-{'eager' if eager else 'graphs'}"] = time.monotonic() - t
        self.log(f"engine {arch} eager={eager} built in {time.monotonic() - t:.1f} s; "
                 f"uses_graphs={getattr(e.runner, 'uses_graphs', None)}")
        return e

    def drop(self, key: str) -> None:
        self.engines.pop(key, None)
        self._free_memory()

    # sections
    def env(self) -> dict[str, Any]:
        import torch

        info: dict[str, Any] = {"torch": torch.__version__, "cuda_available":
                                torch.cuda.is_available()}
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError as e:
            info["triton"] = f"absent ({e})"
        import importlib.util

        for pkg in ("flashinfer", "transformers", "tokenizers", "safetensors", "fastapi"):
            try:
                info[f"has_{pkg}"] = importlib.util.find_spec(pkg) is not None
            except (ImportError, ValueError):
                info[f"has_{pkg}"] = False
        if self.plan.device == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("--device cuda but torch.cuda.is_available() is False")
            prop = torch.cuda.get_device_properties(0)
            info.update(device=torch.cuda.get_device_name(0), sm=f"{prop.major}.{prop.minor}",
                        sms=prop.multi_processor_count, memory_GiB=prop.total_memory / 2**30,
                        cuda=torch.version.cuda)
            info["sdpa_enabled"] = {
                "flash": torch.backends.cuda.flash_sdp_enabled(),
                "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
                "math": torch.backends.cuda.math_sdp_enabled()}
        else:
            info.update(device=f"cpu ({os.cpu_count()} cores)", threads=torch.get_num_threads())
        import unmask_kernels.acceptance
        import unmask_kernels.moe  # noqa: F401 - registers the "moe" backends
        from unmask_kernels.registry import resolve

        for op in ("acceptance", "moe"):
            try:
                info[f"{op}_auto"] = resolve(op, "auto", self.plan.device)[0]
            except Exception as e:  # noqa: BLE001
                info[f"{op}_auto"] = f"error: {e}"
        self.result["meta"]["device"] = info["device"]
        return info

    def peaks(self) -> dict[str, Any]:
        p = self.plan
        bw = copy_bandwidth(p.device, p.copy_bytes)
        peak = matmul_peak(p.device, p.matmul_n, self.torch_dtype)
        self.peak = {"bw": bw, "flops": peak}
        res = {"copy_bandwidth_GBps": bw / 1e9, "matmul_peak_TFLOPs": peak / 1e12,
               "matmul_dtype": str(self.torch_dtype).removeprefix("torch."),
               "copy_bytes": p.copy_bytes, "matmul_n": p.matmul_n}
        dev = self.result["env"].get("device", "")
        if "H200" in str(dev):
            d = DATASHEET["H200"]
            res["datasheet"] = d
            res["copy_vs_datasheet"] = bw / 1e12 / d["hbm_TBps"]
            res["matmul_vs_datasheet"] = peak / 1e12 / d["bf16_dense_TFLOPs"]
        return res

    def _need_peaks(self) -> tuple[float, float]:
        if not self.peak:
            raise RuntimeError("no measured peaks (the peaks section did not complete)")
        return self.peak["bw"], self.peak["flops"]

    def kernels(self) -> dict[str, Any]:
        import torch

        import unmask_kernels.acceptance
        import unmask_kernels.moe  # noqa: F401 - registers the "moe" backends
        from server.model.config import ModelConfig
        from server.tiny.tokenizer import TINY_TOKEN_IDS
        from unmask_kernels.registry import resolve

        p, dev, dt = self.plan, self.plan.device, self.torch_dtype
        bw, peak = self._need_peaks()
        cfg = ModelConfig.from_file(self.model_dir("llada2") / "config.json")
        V, B, mask = cfg.vocab_size, 32, TINY_TOKEN_IDS["<|mask|>"]
        name, accept = resolve("acceptance", "auto", dev)
        acc = []
        g = torch.Generator(device=dev).manual_seed(0)
        for S in p.accept_rows:
            logits = torch.randn(S, B, V, device=dev, dtype=dt, generator=g) * 4
            ids = torch.full((S, B), mask, device=dev)
            und = torch.ones(S, B, dtype=torch.bool, device=dev)
            thr = torch.full((S,), 0.95, device=dev)
            k = torch.ones(S, dtype=torch.long, device=dev)
            t = time_fn(lambda: accept(logits, ids, und, thr, k, mask), dev)  # noqa: B023
            nbytes = logits.numel() * logits.element_size()
            acc.append({"S": S, "logits_MiB": nbytes / 2**20, "us": t * 1e6,
                        "GBps": nbytes / t / 1e9, "fraction_of_copy_bw": nbytes / t / bw})
        E, k_, H, inter = cfg.num_experts, cfg.num_experts_per_tok, cfg.hidden_size, \
            cfg.moe_intermediate_size
        w13 = torch.randn(E, 2 * inter, H, device=dev, dtype=dt, generator=g) * H ** -0.5
        w2 = torch.randn(E, H, inter, device=dev, dtype=dt, generator=g) * inter ** -0.5
        moe: dict[str, list[dict[str, Any]]] = {}
        backends = ["auto"] + (["grouped"] if dev == "cuda" else [])
        for backend in backends:
            try:
                chosen, fn = resolve("moe", backend, dev)
            except ValueError as e:
                moe[backend] = [{"error": str(e)}]
                continue
            rows = []
            for T in p.moe_tokens:
                x = torch.randn(T, H, device=dev, dtype=dt, generator=g)
                ids = torch.rand(T, E, device=dev, generator=g).topk(k_, dim=-1).indices
                w = torch.rand(T, k_, device=dev, generator=g)
                t = time_fn(lambda: fn(x, ids, w, w13, w2), dev)  # noqa: B023
                touched = int(torch.unique(ids).numel())
                flops = T * k_ * 6 * H * inter
                wb = touched * 3 * H * inter * w13.element_size()
                rows.append({"tokens": T, "experts_touched": touched, "us": t * 1e6,
                             "TFLOPs": flops / t / 1e12,
                             "fraction_of_matmul_peak": flops / t / peak,
                             "weight_GBps": wb / t / 1e9, "fraction_of_copy_bw": wb / t / bw})
            moe[f"{backend} ({chosen})"] = rows
        return {"acceptance_backend": name, "acceptance_logits_dtype": str(dt), "vocab": V,
                "acceptance": acc, "moe_shape": {"E": E, "top_k": k_, "H": H, "I": inter},
                "moe": moe}

    def graphs_vs_eager(self) -> dict[str, Any]:
        import torch

        from server.core import GenerateRequest, SamplingParams

        p = self.plan
        res: dict[str, Any] = {}
        g = torch.Generator().manual_seed(123)
        prompts = [tuple(torch.randint(0, ORDINARY_IDS, (n,), generator=g).tolist())
                   for n in (40, 64, 23, 100)[: p.compare_requests]]
        capture_step = 4  # a decode step (after the prompts' prefill)
        tokens: dict[str, list[list[int]]] = {}
        logits: dict[str, Any] = {}
        for key, eager in (("graphs", False), ("eager", True)):
            e = self.engines[f"llada2-{key}"] = self.engine("llada2", eager)
            res[f"{key}_uses_graphs"] = bool(getattr(e.runner, "uses_graphs", False))
            res[f"{key}_attention_backend"] = e.info.attention_backend
            res[f"{key}_acceptance_backend"] = e.info.acceptance_backend
            replays0 = getattr(e.runner, "replays", None)
            seen: dict[str, Any] = {}
            spied = _spy_forward(e.runner, seen)
            outs: dict[str, list[int]] = {}
            for i, ids in enumerate(prompts):
                e.add_request(GenerateRequest(f"cmp-{i}", ids, SamplingParams(
                    max_tokens=p.compare_tokens, ignore_eos=True)))
            step = 0
            while e.has_work():
                seen["capture"] = step == capture_step
                for o in e.step().outputs:
                    outs.setdefault(o.rid, []).extend(o.new_token_ids)
                step += 1
            _unspy(e.runner, spied)
            tokens[key] = [outs.get(f"cmp-{i}", []) for i in range(len(prompts))]
            logits[key] = seen.get("logits")
            replays = getattr(e.runner, "replays", None)
            res[f"{key}_steps"] = step
            res[f"{key}_graph_replays"] = (None if replays is None or replays0 is None
                                           else replays - replays0)
        same = [a == b for a, b in zip(tokens["graphs"], tokens["eager"], strict=True)]
        res["requests"] = len(prompts)
        res["tokens_identical"] = sum(same)
        res["first_divergence"] = [_first_diff(a, b) for a, b in
                                   zip(tokens["graphs"], tokens["eager"], strict=True)]
        res["tokens_per_request"] = [len(t) for t in tokens["eager"]]
        res["logits"] = _compare_logits(logits["graphs"], logits["eager"], capture_step)
        if not res["graphs_uses_graphs"]:
            res["note"] = ("the graph engine uses no CUDA graphs on this device: both runs are "
                           "eager, so this only checks determinism")
        res["experts_touched_eager"] = self._experts_on_eager(
            self.engines["llada2-eager"], 8 if p.device == "cpu" else 32)
        return res

    def _experts_on_eager(self, engine: Any, conc: int) -> dict[str, Any]:
        """Distinct routed experts per MoE layer on one eager steady step, counted by router
        hooks (eager engine only), beside the analytic expectation for the same tokens."""
        import torch

        from server.model.moe import Router

        self._start(engine, conc, "exp")
        counts: list[int] = []
        tokens: list[int] = []

        def hook(_m: Any, inp: Any, out: Any) -> None:
            counts.append(int(torch.unique(out[0]).numel()))
            tokens.append(int(inp[0].shape[0]))

        handles = [m.register_forward_hook(hook) for m in engine.runner.model.modules()
                   if isinstance(m, Router)]
        try:
            engine.step()
        finally:
            for h in handles:
                h.remove()
        self._abort_all(engine)
        cfg = engine.runner.model.cfg
        T = tokens[0] if tokens else 0
        return {"concurrency": conc, "tokens": T, "layers": len(counts),
                "measured_mean": statistics.mean(counts) if counts else None,
                "measured_min": min(counts, default=None),
                "analytic": experts_touched(cfg.num_experts, cfg.num_experts_per_tok, T)}

    def _start(self, engine: Any, conc: int, tag: str) -> dict[str, int]:
        """Add `conc` long greedy requests and step until every one is decoding."""
        import torch

        from server.core import GenerateRequest, SamplingParams

        p = self.plan
        block = engine.info.block_size
        g = torch.Generator().manual_seed(conc)
        max_tokens = engine.max_model_len - p.prompt_len - 2 * block
        for i in range(conc):
            ids = tuple(torch.randint(0, ORDINARY_IDS, (p.prompt_len,), generator=g).tolist())
            engine.add_request(GenerateRequest(f"{tag}-{conc}-{i}", ids, SamplingParams(
                max_tokens=max_tokens, ignore_eos=True)))
        committed, warm, steps = 0, 0, 0
        while warm < p.warm_steps and steps < 400:
            s = engine.step().stats
            committed += s.tokens_committed
            steps += 1
            if _decoding(s, conc, block):
                warm += 1
        if warm < p.warm_steps:
            raise RuntimeError(f"c={conc}: no steady decode step after {steps} steps")
        return {"committed": committed, "steps": steps}

    def _abort_all(self, engine: Any) -> None:
        for rid in list(engine.scheduler.live):
            engine.abort(rid)

    def time_concurrency(self, engine: Any, conc: int, mode: str, tag: str,
                         profile: bool) -> dict[str, Any]:
        p = self.plan
        bw, peak = self._need_peaks()
        block = engine.info.block_size
        start = self._start(engine, conc, tag)
        runner = engine.runner
        times, toks, committed, replayed = [], [], 0, 0
        for _ in range(p.timed_steps):
            r0 = getattr(runner, "replays", None)
            sync(p.device)
            t0 = time.perf_counter()
            s = engine.step().stats
            sync(p.device)
            times.append(time.perf_counter() - t0)
            toks.append(s.num_tokens)
            committed += s.tokens_committed
            r1 = getattr(runner, "replays", None)
            replayed += int(r0 is not None and r1 is not None and r1 > r0)
        syncs = count_syncs(engine, p.device)
        res: dict[str, Any] = {"mode": mode, "concurrency": conc, "steps": len(times),
                               "step_ms_median": statistics.median(times) * 1e3,
                               "step_ms_min": min(times) * 1e3,
                               "step_ms_mean": statistics.mean(times) * 1e3,
                               "tokens_forwarded_median": statistics.median(toks),
                               "tokens_per_forward": committed / max(1, conc * len(times)),
                               "output_tokens_per_s": committed / sum(times),
                               "graph_replayed_steps": (replayed if getattr(
                                   runner, "replays", None) is not None else None),
                               "host_syncs_per_step": syncs.get("syncs"),
                               "host_round_trips_per_step": syncs.get("round_trips"),
                               "host_sync_examples": syncs.get("examples", [])}
        if profile:
            rows, text, attn, wall = profile_steps(engine, p.device, 3)
            busy = sum(r["total_us"] for r in rows) / 1e6 / wall if p.device == "cuda" else None
            res["profile"] = {"top": [_short(r) for r in rows[:TOP_KERNELS]],
                              "attention": attn, "wall_ms_per_step": wall / 3 * 1e3,
                              "gpu_busy_fraction": busy}
            what = "CUDA kernels" if p.device == "cuda" else "CPU ops"
            self.profile_text.append(f"==== {mode} c={conc} ({what}, 3 steps) ====\n{text}")
        self._abort_all(engine)
        ctx = p.prompt_len + start["committed"] / conc + committed / conc / 2
        rows_per_seq = block if mode.startswith("diffusion") else 1
        keys = [int(ctx + rows_per_seq)] * conc
        roof = roofline(engine.runner.model.cfg, [rows_per_seq] * conc, keys,
                        rows_per_seq * conc, self.torch_dtype.itemsize, bw, peak)
        res["roofline"] = roof
        res["fraction_of_roofline"] = roof["roofline_ms"] / res["step_ms_median"]
        self.log(f"{mode} c={conc}: {res['step_ms_median']:.2f} ms/step, roofline "
                 f"{roof['roofline_ms']:.2f} ms ({roof['bound']}), "
                 f"{res['fraction_of_roofline']:.0%}; replayed {res['graph_replayed_steps']}"
                 f"/{len(times)}; syncs {res['host_syncs_per_step']}")
        return res

    def write_partial(self, key: str, runs: list[dict[str, Any]] | None) -> None:
        """The concurrencies done so far, so a kill mid-section keeps them (None: the
        section is complete, its result replaces them)."""
        partial = self.result.setdefault("partial", {})
        if runs is None:
            partial.pop(key, None)
        else:
            partial[key] = runs
        if not partial:
            del self.result["partial"]
        self.write()

    def profiles(self) -> dict[str, Any]:
        """Profiler tables of the graphed diffusion engine at the lowest and highest
        concurrency, last of all (the profiler starting after graphs were captured is a known
        hazard: whatever it does, every other figure is written already)."""
        p = self.plan
        e = self.engines.get("llada2-graphs") or self.engine("llada2", False)
        self.engines["llada2-graphs"] = e
        runs = []
        for c in sorted({min(p.concurrency), max(p.concurrency)}):
            self._start(e, c, "profile")
            rows, text, attn, wall = profile_steps(e, p.device, 3)
            busy = sum(r["total_us"] for r in rows) / 1e6 / wall if p.device == "cuda" else None
            runs.append({"concurrency": c, "profile": {
                "top": [_short(r) for r in rows[:TOP_KERNELS]], "attention": attn,
                "wall_ms_per_step": wall / 3 * 1e3, "gpu_busy_fraction": busy,
                "no_cuda_events": p.device == "cuda" and not rows}})
            what = "CUDA kernels" if p.device == "cuda" else "CPU ops"
            self.profile_text.append(f"==== diffusion c={c} ({what}, 3 steps) ====\n{text}")
            self._abort_all(e)
            self.write_partial("profiles", runs)
        self.write_partial("profiles", None)
        return {"runs": runs}

    def sweep(self, key: str, arch: str, eager: bool, mode: str, concs: list[int],
              per_c_s: float) -> dict[str, Any]:
        e = self.engines.get(key) or self.engine(arch, eager)
        self.engines[key] = e
        runs, skipped = [], []
        for c in concs:
            if self.left() < per_c_s:
                skipped.append(c)
                continue
            try:
                runs.append(self.time_concurrency(e, c, mode, key, profile=False))
            except Exception as ex:  # noqa: BLE001 - one concurrency failing: the rest run
                print(traceback.format_exc(), flush=True)
                runs.append({"mode": mode, "concurrency": c, "error":
                             f"{type(ex).__name__}: {ex}"[:400]})
                self._abort_all(e)
                self._free_memory()
            self.write_partial(key, runs)
        self.write_partial(key, None)
        res: dict[str, Any] = {"engine": _info(e), "uses_graphs": bool(
            getattr(e.runner, "uses_graphs", False)), "runs": runs,
            "graph_counters": _graph_counters(e.runner)}
        if skipped:
            res["skipped_concurrency"] = skipped
            res["skip_reason"] = "time budget"
        return res

    def run(self) -> int:
        p = self.plan
        gpu = p.device == "cuda"
        self.section("env", self.env, 0)
        if self.result["env"]["status"] != "ok":
            self.write()
            return 1
        self.section("peaks", self.peaks, 5)
        self.section("kernels", self.kernels, 30 if gpu else 5)
        self.section("graphs_vs_eager", self.graphs_vs_eager, 60 if gpu else 5)
        self.section("diffusion", lambda: self.sweep(
            "llada2-graphs", "llada2", False, "diffusion", p.concurrency, 15 if gpu else 1),
            30 if gpu else 2)
        self.section("diffusion_eager", lambda: self.sweep(
            "llada2-eager", "llada2", True, "diffusion (eager)", p.eager_concurrency,
            15 if gpu else 1), 30 if gpu else 2)
        self.drop("llada2-eager")
        # a new graphed engine: its start-up (captures, Triton builds) like the first one's
        need_ar = 1.2 * self.build_s.get("llada2-graphs", 60.0) + 30 if gpu else 2
        self.section("ar", lambda: self.sweep("ling2", "ling2", False, "ar", p.concurrency,
                                              10 if gpu else 1), need_ar)
        self.drop("ling2")
        self.section("profiles", self.profiles, 20 if gpu else 2)
        self.drop("llada2-graphs")
        for s in ("pytest", "install"):
            if self.result[s]["status"] == "pending":
                self.result[s] = {"status": "pending", "reason": "gpu_check.sh fills this in "
                                  "after the check (--finalize)"}
        self.result["notes"] += self._notes()
        self.write()
        self.tmp.cleanup()
        return 0

    def _notes(self) -> list[str]:
        notes = ["random (dummy) weights commit about 1 token per step at threshold 0.95: "
                 "tokens_per_forward is not a trained model's figure; no --simulate-tpf run "
                 "here, so no figure is simulated",
                 "graphed vs eager tokens: the Triton MoE (atomic adds) and the grouped path "
                 "(index_add_) sum in a nondeterministic order, and GEMM/attention tilings "
                 "follow the batch size, so with random weights a near-tie token can differ "
                 "even between two eager runs: the logits comparison is the check"]
        if self.plan.device == "cpu":
            notes.append("CPU check: the GPU-only measurements (CUDA graphs, host syncs, "
                         "kernel tables, datasheet ratios) are skipped or stand in for the "
                         "code path only; the CPU timings mean nothing for the GPU")
        return notes


# -- small helpers -------------------------------------------------------------------------------
def _decoding(s: Any, conc: int, block: int) -> bool:
    """A step in which every one of the `conc` sequences decodes (no prefill chunk, nobody
    waiting); a diffusion sequence forwards its active block, maybe with a folded commit."""
    return (s.num_running == conc and s.num_waiting == 0 and s.num_seqs == conc
            and s.num_logit_rows == conc and s.num_tokens <= 2 * block * conc)


def _spy_forward(runner: Any, seen: dict[str, Any]) -> Any:
    """Wrap `runner.forward` (the Runner protocol) to keep the logits of the step marked
    `seen["capture"]`; returns what to restore."""
    orig = runner.forward
    own = "forward" in getattr(runner, "__dict__", {})

    def spy(batch: Any, *a: Any, **kw: Any) -> Any:
        out = orig(batch, *a, **kw)
        if seen.get("capture") and "logits" not in seen:
            import torch

            seen["logits"] = (out.detach().float().cpu().clone() if isinstance(out, torch.Tensor)
                              else f"not a tensor: {type(out).__name__}")
        return out

    try:
        runner.forward = spy
    except AttributeError:  # slots: no spying, the logits comparison says "not captured"
        return None
    return orig, own


def _unspy(runner: Any, spied: Any) -> None:
    if spied is not None:
        orig, own = spied
        if own:
            runner.forward = orig
        else:
            del runner.forward  # the instance attribute: the class's method again


def _compare_logits(a: Any, b: Any, step: int) -> dict[str, Any]:
    import torch

    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        return {"status": "not captured", "graphs": str(a)[:80], "eager": str(b)[:80],
                "reason": "the engine did not call runner.forward with a logits tensor"}
    if a.shape != b.shape:
        return {"status": "shape mismatch", "graphs": list(a.shape), "eager": list(b.shape)}
    diff = (a - b).abs()
    scale = b.abs().max().clamp_min(1e-12)
    return {"status": "ok", "step": step, "rows": a.shape[0], "vocab": a.shape[-1],
            "max_abs_diff": float(diff.max()), "max_rel_to_max": float(diff.max() / scale),
            "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


def _first_diff(a: list[int], b: list[int]) -> int | None:
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    return n if n is not None or len(a) == len(b) else min(len(a), len(b))


def _short(r: dict[str, Any]) -> dict[str, Any]:
    name = r["name"] if len(r["name"]) <= 100 else r["name"][:97] + "..."
    return {"name": name, "calls": r["calls"], "total_us": round(r["total_us"], 1),
            "avg_us": round(r["avg_us"], 2), "share": round(r["share"], 4)}


def _graph_counters(runner: Any) -> dict[str, int]:
    """Whatever integer counters the graph runner offers (`replays` at least, if it exists);
    read with getattr only, so the runner's internals may change freely."""
    out = {}
    for name in ("replays", "eager_steps", "rows_forwarded", "rows_padding"):
        v = getattr(runner, name, None)
        if isinstance(v, int) and not isinstance(v, bool):
            out[name] = v
    failed = getattr(runner, "failed", None)  # buckets whose capture failed (run eagerly)
    if isinstance(failed, set):
        out["failed_buckets"] = len(failed)
    return out


def _info(engine: Any) -> dict[str, Any]:
    i = engine.info
    return {k: getattr(i, k) for k in ("architecture", "mode", "device", "dtype", "block_size",
                                       "num_pages", "max_model_len", "attention_backend",
                                       "acceptance_backend")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for summary.md/.json (+ profiles.txt)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="the tiny shape instead of mini")
    ap.add_argument("--budget-s", type=float, default=240.0,
                    help="seconds for the whole check; sections past it are skipped")
    ap.add_argument("--finalize", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pytest-rc", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--pytest-log", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--pytest-note", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--install-rc", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--install-note", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--check-rc", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.finalize:
        return finalize(args)
    if args.device == "cpu" and not args.tiny:
        ap.error("--device cpu needs --tiny (the mini shape is 16B parameters)")
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return Check(args).run()


if __name__ == "__main__":
    sys.exit(main())
