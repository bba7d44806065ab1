"""`unmask` command line: one parser, one small handler per subcommand (heavy imports lazy)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.config import EngineConfig

Handler = Callable[[argparse.Namespace], int]


def _make_tiny_model(args: argparse.Namespace) -> int:
    from server.tiny import make_tiny_model

    out = make_tiny_model(args.out, arch=args.arch, seed=args.seed, layers=args.layers,
                          peaky=args.peaky, config_of=args.config_of, dtype=args.dtype,
                          weights=not args.config_only)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {args.arch} checkpoint to {out} ({size / 2**20:.1f} MiB)")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from server import LLM, SamplingParams

    llm = LLM(args.model, device=args.device, dtype=args.dtype, num_pages=args.num_pages)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                            threshold=args.threshold)
    if args.chat:
        outs = [llm.chat([{"role": "user", "content": p}], params) for p in args.prompt]
    else:
        outs = llm.generate(args.prompt, params)
    for o in outs:
        stats = o.stats
        print(json.dumps({"text": o.text, "finish_reason": o.finish_reason,
                          "tokens": len(o.token_ids), "steps": stats.steps if stats else 0,
                          "tokens_per_forward": round(stats.tokens_per_forward, 3)
                          if stats else 0.0}, ensure_ascii=False))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import logging

    from server.api.app import ServerSettings
    from server.api.launcher import default_model_dir, serve
    from server.api.limits import RequestLimits
    from server.api.tools import PARSERS
    from server.engine.llm import engine_config

    if args.tool_call_parser not in (*PARSERS, "auto", "none"):
        print(f"unknown --tool-call-parser {args.tool_call_parser!r}; choose auto, none, "
              f"{', '.join(PARSERS)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model = args.model or str(default_model_dir())
    decoding = dict(PRESETS.get(args.decoding_preset or "", {}))  # explicit flags win
    decoding |= {k: v for k, v in dict(
        threshold=args.threshold, editing_threshold=args.editing_threshold,
        max_post_steps=args.max_post_steps).items() if v is not None}
    overrides = (args.hf_overrides or {}) | (
        {"rope_scaling": args.rope_scaling} if args.rope_scaling else {})
    options = decoding | {k: v for k, v in dict(
        device=args.device, dtype=args.dtype,
        block_size=args.block_size, kv_cache_memory=args.kv_cache_memory,
        gpu_memory_utilization=args.gpu_memory_utilization, load_format=args.load_format,
        num_pages=args.num_pages, max_running_requests=args.max_running_requests,
        max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
        prefix_caching=not args.no_prefix_caching, attention_backend=args.attention_backend,
        seed=args.seed, cpu_threads=args.cpu_threads,
        acceptance_backend=args.acceptance_backend, moe_backend=args.moe_backend,
        enforce_eager=args.enforce_eager or None, simulate_tpf=args.simulate_tpf,
        tensor_parallel_size=args.tensor_parallel_size, nnodes=args.nnodes,
        node_rank=args.node_rank, dist_init_addr=args.dist_init_addr,
        hf_overrides=overrides or None).items() if v is not None}
    from server.distributed.node import run_node

    engine = engine_config(model, **options)
    if args.check_config:
        return _check_config(engine)
    from server.model.loader import CheckpointError
    from server.startup import plan_startup

    try:
        plan_startup(engine)  # every check the config files allow, before anything starts
        if engine.node_rank > 0:  # node k of a multi-node group: its ranks only, no HTTP API
            return run_node(engine)
    except (ValueError, CheckpointError) as e:
        print(f"unmask serve: {e}", file=sys.stderr)
        return 2
    # the model argument exactly as typed (hub id or path); the embedded model: its dir name
    names = args.served_model_name or [args.model or Path(model).name]
    settings = ServerSettings(
        engine=engine,
        served_model_name=names[0],
        served_model_aliases=tuple(names[1:]),
        api_key=args.api_key or os.environ.get("UNMASK_API_KEY"),
        max_queued_requests=args.max_queued_requests,
        in_process_engine=args.in_process_engine,
        max_body_bytes=args.max_body_bytes,
        body_timeout_s=args.body_timeout,
        tool_call_parser=args.tool_call_parser,
        limits=RequestLimits(args.max_n, args.max_tokens_limit, args.max_stop_strings,
                             args.max_stop_length, args.max_tool_schema_bytes),
        max_queued_tokens=args.max_queued_tokens,
        log_requests=args.log_requests,
        cors_origins=tuple(args.cors_origins or ()),
    )
    return serve(settings, args.host, args.port, args.shutdown_timeout, args.log_level)


# LLaDA2.1 decoding presets (llada2x-decoding.md §1.9); explicit flags override their values
PRESETS: dict[str, dict[str, float | int]] = {
    "quality": {"threshold": 0.7, "editing_threshold": 0.5, "max_post_steps": 16},
    "speed": {"threshold": 0.5, "editing_threshold": 0.0, "max_post_steps": 16},
}


def _editing_threshold(text: str) -> float | str:
    if text == "off":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number in [0, 1] or 'off', got {text!r}") from None


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _check_config(engine: EngineConfig) -> int:
    """Every start-up check the engine makes from the configuration files, without weights;
    what needs the device itself (free memory, GPUs visible) is listed as not checked."""
    from server.model.config import ModelConfigError
    from server.model.loader import CheckpointError
    from server.startup import plan_startup

    try:
        plan = plan_startup(engine)
    except (ValueError, CheckpointError, ModelConfigError) as e:
        print(f"unmask serve: {e}", file=sys.stderr)
        return 2
    print(json.dumps({
        "ok": True, "model_dir": str(plan.model_dir), "architecture": plan.mcfg.architecture,
        "mode": plan.mcfg.mode, "device": str(plan.device),
        "dtype": str(plan.dtype).removeprefix("torch."), "max_model_len": plan.max_model_len,
        "tensor_parallel_size": engine.tensor_parallel_size, "nnodes": engine.nnodes,
        "ranks_per_node": plan.ranks_per_node,
        "editing": dataclasses.asdict(plan.editing) if plan.editing else None,
        "not_checked": ["GPUs visible per node", "free device memory for the KV pool"],
    }))
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="the OpenAI-compatible HTTP server")
    s.add_argument("model", nargs="?", default=None,
                   help="checkpoint dir or hub id (default: the shipped server/checkpoints/llada2)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--served-model-name", nargs="+", default=None, metavar="NAME",
                   help="names clients may send as `model`; the first is reported in responses "
                        "(default: the model argument as given). Takes every word up to the "
                        "next flag: put MODEL before it")
    s.add_argument("--api-key", default=None, help="require this Bearer key on /v1/*")
    s.add_argument("--device", default=None, help="auto | cpu | cuda[:N]")
    s.add_argument("--dtype", default=None, help="auto | bfloat16 | float16 | float32")
    s.add_argument("--threshold", type=float, default=None, help="default commit threshold")
    s.add_argument("--editing-threshold", type=_editing_threshold, default=None,
                   metavar="P|off",
                   help="LLaDA2.1 token editing by default: rewrite a generated token of the "
                        "active block when the model's new candidate has probability > P "
                        "(0.0 = maximal editing); 'off' = the LLaDA2.0 rule. Default: the "
                        "checkpoint's generation_config.json `editing_threshold`, else off")
    s.add_argument("--max-post-steps", type=int, default=None,
                   help="editing: mask-free iterations a block may edit in (default: "
                        "generation_config.json's, else 16)")
    s.add_argument("--decoding-preset", choices=sorted(PRESETS), default=None,
                   help="LLaDA2.1 presets: quality = threshold 0.7, editing 0.5, 16 post-steps; "
                        "speed = 0.5, 0.0, 16 (explicit flags override)")
    s.add_argument("--block-size", type=int, default=None)
    s.add_argument("--kv-cache-memory", default=None, help="e.g. 2GiB")
    s.add_argument("--gpu-memory-utilization", type=float, default=None,
                   help="share of the GPU's total memory the engine may use; the KV pool gets "
                        "what the weights, a profiled maximal step and CUDA graphs leave "
                        "(default 0.9)")
    s.add_argument("--load-format", choices=("auto", "dummy"), default=None,
                   help="dummy: random weights from config.json alone (benchmarks, no "
                        "checkpoint files)")
    s.add_argument("--num-pages", type=int, default=None)
    s.add_argument("--max-running-requests", type=int, default=None)
    s.add_argument("--max-num-batched-tokens", type=int, default=None)
    s.add_argument("--max-queued-requests", type=int, default=None,
                   help="in-flight requests beyond which new ones get 503")
    s.add_argument("--max-model-len", type=int, default=None,
                   help="context limit (default: the model's; with YaRN, original x factor); "
                        "refused beyond what the model supports")
    s.add_argument("--hf-overrides", type=_json_object, default=None, metavar="JSON",
                   help="replace config.json keys, e.g. '{\"rope_scaling\": {...}}' (vLLM's)")
    s.add_argument("--rope-scaling", type=_json_object, default=None, metavar="JSON",
                   help="shortcut for --hf-overrides '{\"rope_scaling\": JSON}', e.g. "
                        "'{\"rope_type\": \"yarn\", \"factor\": 4}'")
    s.add_argument("--no-prefix-caching", action="store_true")
    s.add_argument("--attention-backend", default=None,
                   help="auto (paged on CUDA, torch elsewhere) | paged (the query-block kernel "
                        "CUDA graphs capture) | torch (SDPA) | flashinfer (CUDA)")
    s.add_argument("--acceptance-backend", default=None, help="auto | torch | triton")
    s.add_argument("--moe-backend", default=None, help="auto | torch | grouped | triton")
    s.add_argument("--enforce-eager", action="store_true",
                   help="no CUDA graphs (no-op on CPU)")
    s.add_argument("--simulate-tpf", type=float, default=None,
                   help="BENCHMARKING ONLY: acceptance oracle committing a fixed schedule of "
                        "this many tokens per forward; outputs are not model outputs and every "
                        "figure is 'simulated TPF'")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--tensor-parallel-size", "--tp", type=int, default=None,
                   help="engine ranks (one process each; heads, experts and vocabulary split "
                        "across them, KV heads replicated beyond their count): NCCL on GPUs "
                        "0..N-1, gloo on CPU")
    s.add_argument("--nnodes", type=int, default=None,
                   help="nodes the --tensor-parallel-size ranks are spread over (each runs "
                        "tp/nnodes; default 1)")
    s.add_argument("--node-rank", type=int, default=None,
                   help="this node (default 0): node 0 serves HTTP and runs rank 0, node k > 0 "
                        "runs its ranks only")
    s.add_argument("--dist-init-addr", default=None, metavar="HOST:PORT",
                   help="node 0's address for the process group's TCPStore (needed with "
                        "--nnodes > 1; rank 0 listens on PORT)")
    s.add_argument("--tool-call-parser", default="auto",
                   help="tool-call format: auto (from the chat template), none, hermes, "
                        "llada2, ling")
    s.add_argument("--cpu-threads", type=int, default=None,
                   help="torch threads of the engine on CPU (default: cores - 1)")
    s.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds in-flight requests get after SIGTERM")
    s.add_argument("--in-process-engine", action="store_true",
                   help="step the engine on a thread of the API process")
    s.add_argument("--max-body-bytes", type=int, default=16 << 20)
    s.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds a request body may stall between chunks before a 408")
    s.add_argument("--max-queued-tokens", type=int, default=None,
                   help="prompt + max_tokens of in-flight requests beyond which new ones "
                        "get 503")
    s.add_argument("--max-n", type=int, default=16, help="most choices (n) per request")
    s.add_argument("--max-tokens-limit", type=int, default=None,
                   help="most max_tokens per choice (default: the context length)")
    s.add_argument("--max-stop-strings", type=int, default=16)
    s.add_argument("--max-stop-length", type=int, default=256, help="characters per stop")
    s.add_argument("--max-tool-schema-bytes", type=int, default=64 << 10,
                   help="JSON size of tools + response_format schema per request")
    s.add_argument("--log-requests", action="store_true",
                   help="log prompts and outputs (off by default: they may be private)")
    s.add_argument("--cors-origins", nargs="+", default=None, metavar="ORIGIN",
                   help="enable CORS for these origins (off by default)")
    s.add_argument("--log-level", default="info")
    s.add_argument("--check-config", action="store_true",
                   help="apply every start-up check to the flags and the model's config files, "
                        "load no weights, print a JSON summary and exit (0 ok, 2 refused)")
    s.set_defaults(handler=_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unmask", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-tiny-model", help="write a tiny random checkpoint (real format)")
    p.add_argument("out")
    p.add_argument("--arch", choices=["llada2", "llada2.2", "ling2"], default="llada2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--peaky", action="store_true",
                   help="scale the output head so some confidences exceed 0.95")
    p.add_argument("--config-of", choices=["mini", "flash"], default=None,
                   help="real LLaDA2.0-mini/flash shapes (random bf16 weights)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--config-only", action="store_true",
                   help="no weights: config, generation config and tokenizer only (enough for "
                        "`unmask serve --check-config`)")
    p.set_defaults(handler=_make_tiny_model)

    g = sub.add_parser("generate", help="offline generation with the engine in this process")
    g.add_argument("model")
    g.add_argument("prompt", nargs="+")
    g.add_argument("--chat", action="store_true", help="wrap each prompt as a user message")
    g.add_argument("--max-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--threshold", type=float, default=None)
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", default="auto")
    g.add_argument("--num-pages", type=int, default=None)
    g.set_defaults(handler=_generate)
    _add_serve(sub)
    from loadtest.cli import add_commands

    add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
