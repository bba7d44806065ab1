"""Evaluation of the exported pair on held-out data: validation loss, pass-rate and exact match
on small code tasks, tool-call validity, tokens per forward over thresholds × block sizes (with
and without CAP), and TPS diffusion vs AR twin through the load tester.

    python -m training eval --dllm server/checkpoints/llada2 --ar server/checkpoints/ling2 \
        --nocap /tmp/unmask-train/work/llada2-nocap --out benchmarks/results/training
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from server.api.tools.hermes import HermesToolParser
from server.core import SamplingParams
from server.engine.llm import LLM
from training import data
from training.pipeline import SCALES

THRESHOLDS = (0.95, 0.9, 0.85)
BLOCKS = (16, 32, 64)
CODE_KINDS = ("write", "complete")


def held_out(scale: str = "full") -> list[data.ChatExample]:
    sc = SCALES[scale]
    _, val = data.split(data.chat_examples(sc.seed, sc.per_func, sc.per_tool), sc.seed, 0.1)
    return val


def extract_code(text: str) -> str:
    m = re.search(r"```(?:python)?\n(.*?)(?:```|$)", text, re.S)
    return (m.group(1) if m else text).strip()


class _Timeout(Exception):
    pass


def passes(code: str, func: str) -> bool:
    """Runs the generated definition and the function's tests (2 s alarm, fresh namespace)."""
    tests = next(t for n, _, _, _, t in data.FUNCS if n == func)

    def alarm(*_: Any) -> None:
        raise _Timeout

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(2)
    try:
        ns: dict[str, Any] = {}
        exec(compile(code, "<generated>", "exec"), ns)  # noqa: S102 - own model, own tests
        return all(ns[func](*args) == want for args, want in tests)
    except BaseException:  # noqa: BLE001 - any failure of generated code is a fail
        return False
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def reference_code(ex: data.ChatExample) -> str:
    return extract_code(ex.messages[-1]["content"])


def tool_call_valid(text: str, tools: list[dict[str, Any]]) -> tuple[bool, str | None]:
    """(well-formed call to an offered tool with its required arguments, called name)."""
    parsed = HermesToolParser().parse(text)
    if not parsed.calls:
        return False, None
    call = parsed.calls[0]
    spec = {t["function"]["name"]: t["function"] for t in tools}
    try:
        args = json.loads(call.arguments) if isinstance(call.arguments, str) else call.arguments
    except (TypeError, ValueError):
        return False, call.name
    ok = (call.name in spec and isinstance(args, dict)
          and all(k in args for k in spec[call.name]["parameters"].get("required", [])))
    return ok, call.name


def tool_call_exact(text: str, ex: data.ChatExample) -> bool:
    """The first call has the reference's name and exactly its arguments (values included)."""
    parsed = HermesToolParser().parse(text)
    want = ex.messages[-1]["tool_calls"][0]["function"]
    if not parsed.calls or parsed.calls[0].name != want["name"]:
        return False
    got = parsed.calls[0].arguments
    try:
        return (json.loads(got) if isinstance(got, str) else got) == json.loads(
            want["arguments"])
    except (TypeError, ValueError):
        return False


def quality(llm: LLM, examples: list[data.ChatExample], threshold: float = 0.95,
            max_tokens: int = 96) -> dict[str, Any]:
    """Greedy generation on held-out code and tool prompts."""
    code = [e for e in examples if e.kind in CODE_KINDS]
    tools = [e for e in examples if e.kind == "tool_call"]
    params = SamplingParams(max_tokens=max_tokens, threshold=threshold)
    outs = _chat_all(llm, code + tools, params)
    res: dict[str, Any] = {"n_code": len(code), "n_tool": len(tools)}
    # tool-call tags are special tokens: decode with them kept, as the server's parser sees it
    keep = llm.tokenizer.keeping(HermesToolParser.keep_tokens)
    gens = [keep.decode(o.token_ids) for o in outs]
    gcode, gtool = gens[: len(code)], gens[len(code):]
    res["pass_rate"] = _mean(passes(extract_code(g), e.func or "")
                             for g, e in zip(gcode, code, strict=True))
    res["exact_match"] = _mean(extract_code(g) == reference_code(e)
                               for g, e in zip(gcode, code, strict=True))
    tool_res = [tool_call_valid(g, e.tools or []) for g, e in zip(gtool, tools, strict=True)]
    res["tool_call_valid"] = _mean(ok for ok, _ in tool_res)
    res["tool_name_correct"] = _mean(
        name == e.messages[-1]["tool_calls"][0]["function"]["name"]
        for (_, name), e in zip(tool_res, tools, strict=True))
    res["tool_call_exact"] = _mean(tool_call_exact(g, e) for g, e in zip(gtool, tools,
                                                                         strict=True))
    res["samples"] = [{"prompt": e.messages[-2]["content"], "output": g}
                      for e, g in list(zip(code + tools, gens, strict=True))[:6]]
    return res


def tpf(llm: LLM, examples: list[data.ChatExample], threshold: float,
        max_tokens: int = 96) -> dict[str, float]:
    """Tokens per forward on held-out code prompts: pooled (Σ tokens / Σ forwards) and the
    mean of per-request values."""
    code = [e for e in examples if e.kind in CODE_KINDS]
    outs = _chat_all(llm, code, SamplingParams(max_tokens=max_tokens, threshold=threshold))
    toks = sum(o.stats.output_tokens for o in outs)
    steps = sum(o.stats.steps for o in outs)
    return {"pooled": round(toks / max(steps, 1), 3),
            "mean": round(_mean(o.stats.tokens_per_forward for o in outs), 3),
            "tokens": toks, "forwards": steps}


def _chat_all(llm: LLM, examples: list[data.ChatExample], params: SamplingParams) -> list:
    tok = llm.tokenizer
    prompts = [tok.encode_prompt(tok.apply_chat_template(e.messages[:-1], tools=e.tools))
               for e in examples]
    return llm.generate(prompts, params)


def _mean(xs: Any) -> float:
    xs = [float(x) for x in xs]
    return round(sum(xs) / len(xs), 4) if xs else float("nan")


@torch.no_grad()
def val_loss(model_dir: Path, examples: list[data.ChatExample]) -> float:
    """Held-out chat loss of a checkpoint: masked-diffusion CE (block 32, fixed masks, the
    pipeline's validation) for LLaDA2, next-token CE on the responses for Ling-2.0."""
    from server.model.config import ModelConfig
    from server.model.loader import load_model
    from server.model.tokenizer import load_tokenizer
    from training.datasets import SftRow, sft_batch
    from training.objectives import ar_loss
    from training.pipeline import _dm_val

    cfg = ModelConfig.from_dict(json.loads((model_dir / "config.json").read_text()))
    model = load_model(model_dir, cfg, torch.float32, torch.device("cpu"))
    tok = load_tokenizer(model_dir)
    rows = []
    for e in examples:
        prompt = tok.encode_prompt(tok.apply_chat_template(e.messages[:-1], tools=e.tools))
        full = tok.encode_prompt(tok.apply_chat_template(e.messages, tools=e.tools,
                                                         add_generation_prompt=False))
        rows.append(SftRow(prompt, full[len(prompt):], e.kind))
    eos = tok.hf.convert_tokens_to_ids("<|endoftext|>")
    batches = [sft_batch(rows[i : i + 8], eos) for i in range(0, len(rows), 8)]
    if cfg.mode == "ar":
        return round(sum(float(ar_loss(model, b.ids, b.doc, b.ar_weight)) for b in batches)
                     / len(batches), 4)
    return round(_dm_val(model, [(b.ids, b.doc, b.maskable) for b in batches], tok.mask_id,
                         SCALES["full"]), 4)


def tps(dllm: Path, ar: Path, out: Path, concurrency: str, num_prompts: int,
        examples: list[data.ChatExample]) -> dict:
    """`unmask bench compare --dllm --ar` on the given checkpoints (CPU), twice: the held-out
    code prompts as chat requests that stop where the model stops (≤ 96 tokens), and random
    64-token prompts with 64 forced output tokens (`ignore_eos`)."""
    from loadtest.cli import compare_local
    from server.cli import build_parser

    code = [e for e in examples if e.kind in CODE_KINDS]
    heldout = out / "heldout_code_prompts.jsonl"
    heldout.write_text("".join(json.dumps({"messages": e.messages[:-1], "max_tokens": 96})
                               + "\n" for e in code))
    runs = {"heldout": ["--workload", "jsonl", "--dataset-path", str(heldout), "--endpoint",
                        "chat", "--num-prompts", str(len(code)), "--no-ignore-eos"],
            "random": ["--num-prompts", str(num_prompts), "--ignore-eos"]}
    keys = ("max_concurrency", "completed", "failed", "output_throughput",
            "request_throughput", "server_tokens_per_forward")
    summary = {}
    for name, extra in runs.items():
        args = build_parser().parse_args([
            "bench", "compare", "--dllm", str(dllm), "--ar", str(ar), "--out", str(out),
            "--sweep-concurrency", concurrency, "--num-pages", "1024",
            "--result-json", str(out / f"tps_{name}.json"), *extra])
        results = compare_local(dllm, ar, args, log_dir=Path(tempfile.gettempdir()))
        summary[name] = {t: [{k: r.get(k) for k in keys} for r in rs]
                         for t, rs in results.items()}
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training eval")
    p.add_argument("--dllm", default="server/checkpoints/llada2")
    p.add_argument("--ar", default="server/checkpoints/ling2")
    p.add_argument("--nocap", default=None, help="the no-CAP SFT checkpoint (comparison)")
    p.add_argument("--out", default="benchmarks/results/training")
    p.add_argument("--scale", default="full", choices=sorted(SCALES))
    p.add_argument("--limit", type=int, default=0, help="at most this many held-out prompts")
    p.add_argument("--skip-tps", action="store_true")
    p.add_argument("--tps-concurrency", default="1,8")
    p.add_argument("--tps-prompts", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    exs = held_out(a.scale)
    if a.limit:
        code = [e for e in exs if e.kind in CODE_KINDS][: a.limit]
        tools = [e for e in exs if e.kind == "tool_call"][: a.limit]
        exs = code + tools + [e for e in exs if e.kind not in CODE_KINDS + ("tool_call",)][
            : a.limit]
    t0 = time.monotonic()
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": "cpu",
                           "command": "python -m training eval " + " ".join(argv or sys.argv[1:]),
                           "held_out": {k: sum(e.kind == k for e in exs)
                                        for k in sorted({e.kind for e in exs})}}
    models = {"dllm_cap": Path(a.dllm), "ar": Path(a.ar)}
    if a.nocap:
        models["dllm_nocap"] = Path(a.nocap)
    for name, d in models.items():
        res[name] = {"val_loss": val_loss(d, exs)}
        llm = LLM(str(d), device="cpu")
        res[name]["quality"] = quality(llm, exs)
        if name.startswith("dllm"):
            table = {}
            for blk in BLOCKS:
                llm_b = LLM(str(d), device="cpu", block_size=blk)
                for th in THRESHOLDS:
                    table[f"b{blk}_t{th}"] = tpf(llm_b, exs, th)
                del llm_b
            res[name]["tpf"] = table
        del llm
        print(json.dumps({name: {k: v for k, v in res[name].items() if k != "quality"}}),
              flush=True)
    if not a.skip_tps:
        res["tps"] = tps(Path(a.dllm), Path(a.ar), out, a.tps_concurrency, a.tps_prompts, exs)
    res["wall_s"] = round(time.monotonic() - t0, 1)
    (out / "eval.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(markdown(res))
    return 0


def markdown(res: dict[str, Any]) -> str:
    lines = ["| model | val loss | pass-rate | exact match | tool-call valid | tool name ok | "
             "tool call exact |", "|---|---|---|---|---|---|---|"]
    for name in ("dllm_cap", "dllm_nocap", "ar"):
        if name in res:
            q = res[name]["quality"]
            lines.append(f"| {name} | {res[name]['val_loss']} | {q['pass_rate']} | "
                         f"{q['exact_match']} | {q['tool_call_valid']} | "
                         f"{q['tool_name_correct']} | {q['tool_call_exact']} |")
    lines += ["", "Tokens per forward on held-out code (mean per request / pooled):", "",
              "| model | block | " + " | ".join(f"t={t}" for t in THRESHOLDS) + " |",
              "|---|---|" + "---|" * len(THRESHOLDS)]
    for name in ("dllm_cap", "dllm_nocap"):
        if name in res and "tpf" in res[name]:
            for blk in BLOCKS:
                cells = [res[name]["tpf"][f"b{blk}_t{t}"] for t in THRESHOLDS]
                lines.append(f"| {name} | {blk} | " + " | ".join(
                    f"{c['mean']} / {c['pooled']}" for c in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
