"""LLaDA2.0 rule vs LLaDA2.1 editing (Q and S presets) on the shipped model, CPU.

    python benchmarks/editing_cpu.py [--concurrency 1 8] [--max-tokens 96] [--out FILE]

Held-out code prompts of the shipped model's distribution (training/eval.py `held_out`), greedy.
Per rule and concurrency: tokens per forward (pooled: output tokens / forwards of all
requests), output tok/s (wall, engine in this process, 2 threads), mean engine step time, the
pass-rate of the generated functions, and edits / post-steps per block. The step-time ratio
of an editing rule to the 2.0 rule at the same threshold is the extra step cost of editing.
`fusable` is the share of forwards the llada2x-decoding.md §2.3 optimisation (a block's final,
settling forward fused with the next block's first forward) would save: one per completed
editing block that is not a request's last (not implemented; docs/editing.md).
"""

from __future__ import annotations

import argparse
import json
import platform
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
from training.eval import CODE_KINDS, extract_code, held_out, passes  # noqa: E402

RULES: dict[str, dict[str, object]] = {
    "2.0 t=0.95": {"threshold": 0.95, "editing_threshold": "off"},
    "2.0 t=0.7": {"threshold": 0.7, "editing_threshold": "off"},
    "2.0 t=0.5": {"threshold": 0.5, "editing_threshold": "off"},
    "2.1 Q (0.7, 0.5, 16)": {"threshold": 0.7, "editing_threshold": 0.5, "max_post_steps": 16},
    "2.1 S (0.5, 0.0, 16)": {"threshold": 0.5, "editing_threshold": 0.0, "max_post_steps": 16},
}


def run(rule: dict[str, object], prompts: list[list[int]], concurrency: int,
        max_tokens: int) -> dict[str, object]:
    engine = Engine(engine_config(str(LLADA2), device="cpu", num_pages=2048,
                                  max_running_requests=concurrency))
    for i, ids in enumerate(prompts):
        engine.add_request(GenerateRequest(f"r{i}", tuple(ids),
                                           SamplingParams(max_tokens=max_tokens, **rule)))
    out: dict[str, list[int]] = {f"r{i}": [] for i in range(len(prompts))}
    forwards = steps = 0
    step_time = 0.0
    edits: list[int] = []
    posts: list[int] = []
    t0 = time.perf_counter()
    while engine.has_work():
        r = engine.step()
        steps += 1
        step_time += r.stats.step_time
        forwards += r.stats.num_logit_rows
        edits += r.stats.edits_per_block
        posts += r.stats.post_steps_per_block
        for o in r.outputs:
            out[o.rid] += o.new_token_ids
    wall = time.perf_counter() - t0
    tokens = sum(len(v) for v in out.values())
    return {"tokens": tokens, "forwards": forwards, "tpf": round(tokens / forwards, 3),
            "tok_s": round(tokens / wall, 1), "wall_s": round(wall, 2),
            "step_ms": round(1000 * step_time / steps, 3), "steps": steps,
            "edits_per_block": round(sum(edits) / len(edits), 2) if edits else None,
            "post_steps_per_block": round(sum(posts) / len(posts), 2) if posts else None,
            "fusable": round((len(edits) - len(prompts)) / forwards, 3) if edits else None,
            "outputs": [out[f"r{i}"] for i in range(len(prompts))]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)
    tok = load_tokenizer(LLADA2)
    code = [e for e in held_out() if e.kind in CODE_KINDS]
    prompts = [tok.encode_prompt(tok.apply_chat_template(e.messages[:-1])) for e in code]
    rows = []
    for c in a.concurrency:
        for name, rule in RULES.items():
            res = run(rule, prompts, c, a.max_tokens)
            texts = [tok.decode(ids) for ids in res.pop("outputs")]  # type: ignore[attr-defined]
            res["pass_rate"] = round(sum(passes(extract_code(t), e.func or "")
                                         for t, e in zip(texts, code, strict=True))
                                     / len(code), 3)
            rows.append({"rule": name, "concurrency": c, **res})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{len(prompts)} held-out code prompts, max_tokens {a.max_tokens}; "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}\n")
    print("| rule | c | TPF | tok/s | step ms | pass-rate | edits/block | post-steps/block "
          "| fusable |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rule']} | {r['concurrency']} | {r['tpf']} | {r['tok_s']} | "
              f"{r['step_ms']} | {r['pass_rate']} | {r['edits_per_block']} | "
              f"{r['post_steps_per_block']} | {r['fusable']} |")
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
