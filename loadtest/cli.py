"""`unmask loadtest`, `unmask bench compare` and `unmask baseline sglang`."""

from __future__ import annotations

import argparse
import math
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest import report
from loadtest.runner import LoadSpec, Target, run_sweep
from loadtest.workloads import (
    WorkItem,
    jsonl_workload,
    random_workload,
    shared_prefix_workload,
    sharegpt_workload,
    tools_workload,
)


def _levels(text: str | None) -> list[int] | None:
    return [int(x) for x in text.split(",")] if text else None


def _goodput(items: list[str] | None) -> dict[str, float] | None:
    if not items:
        return None
    out = {}
    for item in items:
        key, _, ms = item.partition(":")
        if key not in ("ttft", "tpot", "e2el"):
            raise SystemExit(f"--goodput takes ttft:MS tpot:MS e2el:MS, not {item!r}")
        out[key] = float(ms)
    return out


def _targets(args: argparse.Namespace) -> list[Target]:
    if not args.target:
        return [Target("server", args.base_url, args.model, args.api_key)]
    out = []
    for t in args.target:
        name, sep, url = t.partition("=")
        if not sep:
            raise SystemExit(f"--target takes NAME=URL, not {t!r}")
        out.append(Target(name, url, args.model, args.api_key))
    return out


def build_workload(args: argparse.Namespace) -> list[WorkItem]:
    tok = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.tokenizer)
    n, seed = args.num_prompts, args.seed
    if args.workload == "random":
        items = random_workload(n, args.input_len, args.output_len, args.range_ratio, seed, tok)
    elif args.workload == "shared-prefix":
        items = shared_prefix_workload(n, args.prefix_groups, args.prefix_len, args.input_len,
                                       args.output_len, seed, tok)
    elif args.workload == "tools":
        items = tools_workload(n, args.output_len, seed, args.tool_choice)
    elif args.workload == "jsonl":
        items = jsonl_workload(Path(args.dataset_path), args.output_len, n)
    else:
        items = sharegpt_workload(Path(args.dataset_path), n, seed, tok)
    if args.endpoint == "chat":
        for it in items:
            if it.messages is None:
                if isinstance(it.prompt, str):
                    text = it.prompt
                else:  # token ids come only from a tokenizer's workload
                    assert tok is not None and it.prompt is not None
                    text = str(tok.decode(it.prompt))
                it.messages, it.prompt = [{"role": "user", "content": text}], None
    return items


def run_loadtest(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    items = build_workload(args)
    load = LoadSpec(request_rate=args.request_rate, burstiness=args.burstiness,
                    max_concurrency=args.max_concurrency, num_warmups=args.num_warmups,
                    ignore_eos=args.ignore_eos, seed=args.seed, goodput=_goodput(args.goodput))
    results = {}
    for t in _targets(args):
        results[t.name] = run_sweep(t, items, load, _levels(args.sweep_concurrency))
    return results


def finish(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]]) -> None:
    print(report.table(results))
    cmp = report.compare(results)
    if cmp:
        print(report.comparison_text(cmp))
    meta = {"date": time.strftime("%Y%m%d-%H%M%S"), "backend": "openai-chat" if
            args.endpoint == "chat" else "openai", "workload": args.workload,
            "num_prompts": args.num_prompts, "seed": args.seed,
            "command": " ".join(shlex.quote(a) for a in sys.argv)}
    if args.result_json:
        report.save_json(Path(args.result_json), results, meta)
        print(f"wrote {args.result_json}")
    if args.plot:
        for p in report.plot(Path(args.plot), results):
            print(f"wrote {p}")


def _loadtest(args: argparse.Namespace) -> int:
    if args.soak:
        return _soak(args)
    finish(args, run_loadtest(args))
    return 0


def _soak(args: argparse.Namespace) -> int:
    import json

    from loadtest.soak import SoakSpec, run_soak, text_report

    spec = SoakSpec(args.base_url, args.model, args.api_key, args.soak_duration,
                    args.soak_max_requests, args.max_concurrency or 8, args.seed,
                    args.output_len)
    result = run_soak(spec)
    result["command"] = " ".join(shlex.quote(a) for a in sys.argv)
    result["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    print(text_report(result))
    if args.result_json:
        Path(args.result_json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.result_json}")
    return 0 if result["unexpected_errors"] == 0 else 1


def add_loadtest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--target", action="append", metavar="NAME=URL",
                   help="repeat to compare targets on the identical workload")
    p.add_argument("--model", default=None, help="default: the target's first model")
    p.add_argument("--api-key", default=None)
    p.add_argument("--workload", default="random",
                   choices=["random", "shared-prefix", "tools", "jsonl", "sharegpt"])
    p.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    p.add_argument("--dataset-path", default=None, help="the jsonl or ShareGPT file")
    p.add_argument("--tokenizer", default=None, help="exact token-id prompts (HF dir or id)")
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--range-ratio", type=float, default=0.0)
    p.add_argument("--prefix-groups", type=int, default=4)
    p.add_argument("--prefix-len", type=int, default=256)
    p.add_argument("--tool-choice", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--request-rate", type=float, default=math.inf)
    p.add_argument("--burstiness", type=float, default=1.0)
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--sweep-concurrency", default=None, metavar="1,4,16,64")
    p.add_argument("--num-warmups", type=int, default=0)
    p.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=False,
                   help="force output-len tokens (bench compare: on by default)")
    p.add_argument("--goodput", nargs="*", metavar="KEY:MS")
    p.add_argument("--result-json", default=None)
    p.add_argument("--plot", default=None, metavar="DIR", help="write PNG charts there")


def add_soak_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--soak", action="store_true",
                   help="bounded soak of a loopback server: normal traffic mixed with "
                        "disconnects, cancellations and bad requests (see docs/reliability.md)")
    p.add_argument("--soak-duration", type=float, default=600.0, help="seconds (max 3600)")
    p.add_argument("--soak-max-requests", type=int, default=20000, help="max 200000")


def _bench_compare(args: argparse.Namespace) -> int:
    """Two local servers, a diffusion model and its AR twin, one sweep, one report: the given
    checkpoints (--dllm/--ar), or a generated tiny pair."""
    from server.tiny import make_tiny_model

    if bool(args.dllm) != bool(args.ar):
        print("unmask bench compare: give both --dllm and --ar, or neither", file=sys.stderr)
        return 2
    if args.dllm:
        compare_local(Path(args.dllm), Path(args.ar), args)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        kw: dict[str, Any] = {"seed": 0}
        if args.config_of:
            kw |= {"config_of": args.config_of, "dtype": "bfloat16"}
        dllm = make_tiny_model(Path(tmp) / "llada2", arch="llada2", peaky=args.peaky, **kw)
        ar = make_tiny_model(Path(tmp) / "ling2", arch="ling2", **kw)
        compare_local(dllm, ar, args)
    return 0


def compare_local(dllm: Path, ar: Path, args: argparse.Namespace,
                  log_dir: Path | None = None) -> dict[str, list[dict]]:
    """Serve both checkpoints locally (`args.device`, `args.num_pages`), run the load test
    against both on one workload, report; the prompts use the diffusion model's tokenizer.
    Server logs go to `log_dir` (default: `args.out`)."""
    from loadtest.local import LocalServer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = ["--device", args.device, "--num-pages", str(args.num_pages),
             "--max-running-requests", str(max(_levels(args.sweep_concurrency) or [64]))]
    log_dir = log_dir or out
    with LocalServer(dllm, "dllm", *extra, log_dir=log_dir) as a, \
            LocalServer(ar, "ar", *extra, log_dir=log_dir) as b:
        args.target = [f"dllm={a.url}", f"ar={b.url}"]
        args.tokenizer = str(dllm)
        results = run_loadtest(args)
        finish(args, results)
    return results


def _baseline_sglang(args: argparse.Namespace) -> int:
    """The AR twin under SGLang with our scheduling limits (GPU machines only)."""
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", args.model,
           "--port", str(args.port), "--tp-size", str(args.tensor_parallel_size),
           "--max-running-requests", str(args.max_running_requests),
           "--chunked-prefill-size", str(args.max_num_batched_tokens),
           "--mem-fraction-static", "0.85", "--trust-remote-code"]
    print(" ".join(shlex.quote(c) for c in cmd))
    if args.dry_run:
        return 0
    import importlib.util

    if importlib.util.find_spec("sglang") is None:
        print("sglang is not installed: `pip install 'unmask[sglang]'` on a CUDA machine",
              file=sys.stderr)
        return 2
    return subprocess.call(cmd)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("loadtest", help="streaming load test of OpenAI-compatible targets")
    add_loadtest_args(p)
    add_soak_args(p)
    p.set_defaults(handler=_loadtest)

    bench = sub.add_parser("bench", help="packaged benchmarks")
    bsub = bench.add_subparsers(dest="bench", required=True)
    c = bsub.add_parser("compare", help="tiny LLaDA2 vs its Ling-2.0 AR twin, side by side")
    add_loadtest_args(c)
    c.add_argument("--out", default="benchmarks/results/compare")
    c.add_argument("--dllm", default=None, help="diffusion checkpoint (with --ar; default: "
                                                "a generated tiny pair)")
    c.add_argument("--ar", default=None, help="its AR twin's checkpoint")
    c.add_argument("--device", default="cpu")
    c.add_argument("--config-of", choices=["mini", "flash"], default=None)
    c.add_argument("--peaky", action="store_true", help="diffusion weights with TPF > 1")
    c.add_argument("--num-pages", type=int, default=4096)
    c.set_defaults(handler=_bench_compare, sweep_concurrency="1,4,16", num_prompts=32,
                   input_len=64, output_len=64, ignore_eos=True)

    b = sub.add_parser("baseline", help="launch an external AR baseline server")
    bb = b.add_subparsers(dest="baseline", required=True)
    s = bb.add_parser("sglang", help="python -m sglang.launch_server with matching limits")
    s.add_argument("model")
    s.add_argument("--port", type=int, default=30000)
    s.add_argument("--tensor-parallel-size", type=int, default=1)
    s.add_argument("--max-running-requests", type=int, default=64)
    s.add_argument("--max-num-batched-tokens", type=int, default=8192)
    s.add_argument("--dry-run", action="store_true", help="print the command only")
    s.set_defaults(handler=_baseline_sglang)

