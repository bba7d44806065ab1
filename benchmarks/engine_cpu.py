"""Engine vs the plain reference decoder (no cache, batch 1) on a tiny checkpoint, on CPU.

    python benchmarks/engine_cpu.py [--prompt 256] [--output 256] [--concurrency 1 16]

Both decode greedily with the same weights and commit the same tokens (the test suite proves
it), so the ratio of output tokens per second is the engine's speed-up. The reference is timed
on one request (it serves one at a time); the engine on `c` concurrent requests.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.core import GenerateRequest, SamplingParams  # noqa: E402
from server.engine.engine import Engine  # noqa: E402
from server.engine.llm import engine_config  # noqa: E402
from server.model.specials import read_special_ids  # noqa: E402
from server.tiny import make_tiny_model  # noqa: E402
from tests.e2e.engine_harness import make_prompt  # noqa: E402
from tests.reference.decode import reference_generate  # noqa: E402
from tests.reference.model import load_reference  # noqa: E402

SHAPES: dict[str, dict[str, int]] = {
    "tiny": {},
    "small": dict(hidden_size=512, intermediate_size=1024, moe_intermediate_size=256,
                  num_attention_heads=8, num_key_value_heads=2, head_dim=64, num_experts=16,
                  num_experts_per_tok=4, n_group=4, topk_group=2, num_hidden_layers=4),
}


def time_reference(model_dir: Path, prompt: list[int], n: int) -> tuple[float, int]:
    model = load_reference(model_dir)
    sp = read_special_ids(model_dir)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = reference_generate(model, prompt, n, mask_id=sp.mask_id, eos_ids=())
    return time.perf_counter() - t0, len(out)


def time_engine(model_dir: Path, prompts: list[list[int]], n: int) -> dict[str, float]:
    engine = Engine(engine_config(str(model_dir), max_running_requests=len(prompts),
                                  num_pages=4096, prefix_caching=False))
    params = SamplingParams(max_tokens=n, ignore_eos=True)
    t0 = time.perf_counter()
    for i, p in enumerate(prompts):
        engine.add_request(GenerateRequest(f"b{i}", tuple(p), params))
    tokens = steps = 0
    while engine.has_work():
        r = engine.step()
        steps += 1
        tokens += sum(len(o.new_token_ids) for o in r.outputs)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "tokens": tokens, "steps": steps, "tok_s": tokens / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--output", type=int, default=256)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--peaky", action="store_true", help="weights that commit >1 token/step")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny",
                    help="tiny: the test checkpoint (op-overhead bound); small: wider, so "
                         "compute dominates as it does for real models")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_model(Path(tmp), arch="llada2", seed=0, peaky=args.peaky,
                                    overrides=SHAPES[args.shape])
        prompts = [make_prompt(model_dir, args.prompt, seed=i) for i in range(max(
            args.concurrency))]
        ref_wall, ref_tokens = time_reference(model_dir, prompts[0], args.output)
        ref_tok_s = ref_tokens / ref_wall
        rows = []
        for c in args.concurrency:
            e = time_engine(model_dir, prompts[:c], args.output)
            rows.append({"concurrency": c, **e, "speedup": e["tok_s"] / ref_tok_s})
    report = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "threads": args.threads, "torch": torch.__version__, "prompt": args.prompt,
        "output": args.output, "peaky": args.peaky, "shape": args.shape,
        "reference": {"wall_s": ref_wall, "tokens": ref_tokens, "tok_s": ref_tok_s},
        "engine": rows,
    }
    print(json.dumps(report, indent=2))
    for r in rows:
        print(f"c={r['concurrency']:>3}: engine {r['tok_s']:8.1f} tok/s vs reference "
              f"{ref_tok_s:6.1f} tok/s → {r['speedup']:.1f}x")


if __name__ == "__main__":
    main()
