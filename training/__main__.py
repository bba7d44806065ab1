"""`python -m training run|eval|examples ...`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train both models and export them")
    r.add_argument("--out", default="server/checkpoints",
                   help="exports <out>/llada2 and <out>/ling2")
    r.add_argument("--scale", default="full", choices=["full", "toy"])
    r.add_argument("--work", default=None, help="non-shipped outputs (no-CAP checkpoint)")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--caps", default=None,
                   help="wall caps in seconds per stage, e.g. ar_pretrain=600,sft_cap=1800 "
                        "(stages: ar_pretrain, ar_sft, convert, sft_cap; the no-CAP SFT "
                        "repeats sft_cap's step count)")
    r.add_argument("--log", default=None, help="JSON-lines training log")
    sub.add_parser("eval", help="evaluate exported checkpoints (see training/eval.py)")
    sub.add_parser("examples", help="serve a checkpoint and ask the README's prompts")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["eval"]:
        from training.eval import main as eval_main

        return eval_main(argv[1:])
    if argv[:1] == ["examples"]:
        from training.examples import main as examples_main

        return examples_main(argv[1:])
    args = p.parse_args(argv)
    from training import pipeline

    if args.caps:
        try:
            caps = {k: float(v) for k, v in (kv.split("=") for kv in args.caps.split(","))}
        except ValueError:
            p.error(f"--caps takes stage=seconds,...: {args.caps!r}")
        unknown = set(caps) - {"ar_pretrain", "ar_sft", "convert", "sft_cap"}
        if unknown:
            p.error(f"unknown stage in --caps: {sorted(unknown)}")
        pipeline.SCALES[args.scale].caps.update(caps)
    summary = pipeline.run(Path(args.out), args.scale, Path(args.work) if args.work else None,
                           Path(args.log) if args.log else None, args.threads)
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, list)}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
