"""`unmask` command line: one parser, one small handler per subcommand (heavy imports lazy)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]


def _make_tiny_model(args: argparse.Namespace) -> int:
    from server.tiny import make_tiny_model

    out = make_tiny_model(args.out, arch=args.arch, seed=args.seed, layers=args.layers,
                          peaky=args.peaky, config_of=args.config_of, dtype=args.dtype)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unmask", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-tiny-model", help="write a tiny random checkpoint (real format)")
    p.add_argument("out")
    p.add_argument("--arch", choices=["llada2", "ling2"], default="llada2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--peaky", action="store_true",
                   help="scale the output head so some confidences exceed 0.95")
    p.add_argument("--config-of", choices=["mini", "flash"], default=None,
                   help="real LLaDA2.0-mini/flash shapes (random bf16 weights)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
