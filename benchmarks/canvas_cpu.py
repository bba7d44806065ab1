"""What one canvas-stream request costs the others in its batch, shipped model, CPU.

    python benchmarks/canvas_cpu.py [--normal 16] [--max-tokens 96] [--repeats 3] [--out FILE]

Three runs of the same greedy batch (held-out code prompts) through the engine in this
process: `normal` requests alone; plus one more request without the canvas; plus the same
request with `canvas=True` (what `stream_options.include_canvas` sets). The normal requests'
tokens must be identical in all three (checked), and the mean engine step time of the last
two compared (best of `repeats` interleaved runs): their ratio is the canvas's own cost (the
per-cell confidences, the frame).
The API process's share (JSON, per-cell text) is not in the engine step and not measured here.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.checkpoints import LLADA2  # noqa: E402
from server.core import GenerateRequest, SamplingParams  # noqa: E402
from server.engine.engine import Engine  # noqa: E402
from server.engine.llm import engine_config  # noqa: E402
from server.model.tokenizer import load_tokenizer  # noqa: E402
from training.eval import CODE_KINDS, held_out  # noqa: E402


def run(engine: Engine, prompts: list[list[int]], extra: bool | None, max_tokens: int
        ) -> tuple[dict[str, list[int]], list[float]]:
    """Tokens per normal request, and every step's wall time."""
    for i, ids in enumerate(prompts):
        engine.add_request(GenerateRequest(f"n{i}", tuple(ids), SamplingParams(
            max_tokens=max_tokens, ignore_eos=True)))
    if extra is not None:
        engine.add_request(GenerateRequest("extra", tuple(prompts[0]), SamplingParams(
            max_tokens=max_tokens, ignore_eos=True, canvas=extra)))
    tokens: dict[str, list[int]] = {}
    times = []
    while engine.has_work():
        t0 = time.perf_counter()
        outs = engine.step().outputs
        times.append(time.perf_counter() - t0)
        for o in outs:
            tokens.setdefault(o.rid, []).extend(o.new_token_ids)
    tokens.pop("extra", None)
    return tokens, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--normal", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    tok = load_tokenizer(str(LLADA2))
    examples = [e for e in held_out() if e.kind in CODE_KINDS][: args.normal]
    prompts = [tok.encode_prompt(tok.apply_chat_template(e.messages[:-1])) for e in examples]
    engine = Engine(engine_config(str(LLADA2), device="cpu", num_pages=2048,
                                  max_running_requests=args.normal + 1))
    result: dict = {"command": " ".join(sys.argv), "model": "server/checkpoints/llada2",
                    "device": f"cpu ({platform.processor() or platform.machine()}, 2 threads)",
                    "date": time.strftime("%Y-%m-%d"), "normal": args.normal, "runs": {}}
    want = None
    configs = (("normal only", None), ("+1 plain", False), ("+1 canvas", True))
    means: dict[str, list[float]] = {name: [] for name, _ in configs}
    steps: dict[str, int] = {}
    for _ in range(args.repeats):  # interleaved, so drift in the machine hits all alike
        for name, extra in configs:
            tokens, times = run(engine, prompts, extra, args.max_tokens)
            want = want or tokens
            assert tokens == want, f"{name}: the normal requests' tokens changed"
            means[name].append(statistics.mean(times))
            steps[name] = len(times)
    result["runs"] = {name: {"mean_step_ms": round(1e3 * min(means[name]), 3),
                             "steps": steps[name]} for name, _ in configs}
    plain, canvas = (result["runs"][k]["mean_step_ms"] for k in ("+1 plain", "+1 canvas"))
    result["canvas_step_overhead_pct"] = round(100 * (canvas / plain - 1), 2)
    result["normal_tokens_unchanged"] = True
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
