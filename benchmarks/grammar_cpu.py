"""Structured output on CPU: grammar compile times, the step-time cost of constrained decoding
at concurrency 16, and tokens per forward of the 200 + 200 request workload over HTTP.

    python benchmarks/grammar_cpu.py [--concurrency 16] [--skip-http]

All on the tiny random-weight LLaDA2 checkpoint (the worst case for acceptance: only the grammar
makes outputs valid, and only forced tokens commit more than one per forward).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.api.tools.hermes import HermesToolParser  # noqa: E402
from server.core import GenerateRequest, GrammarKind, GrammarSpec, SamplingParams  # noqa: E402
from server.engine.engine import Engine  # noqa: E402
from server.engine.llm import engine_config  # noqa: E402
from server.grammar.compiler import GrammarCompilerPool  # noqa: E402
from server.model.specials import read_special_ids  # noqa: E402
from server.model.tokenizer import TokenizerInfo  # noqa: E402
from server.tiny import make_tiny_model  # noqa: E402
from tests.e2e.engine_harness import make_prompt  # noqa: E402
from tests.e2e.server_harness import RemoteServer  # noqa: E402
from tests.e2e.structured_workload import (  # noqa: E402
    SCHEMAS,
    TOOLS,
    gather_limited,
    required_tool_request,
    schema_request,
)


def specs(model: Path) -> dict[str, GrammarSpec]:
    specials = TokenizerInfo(model).special_tokens
    hermes = HermesToolParser()
    out = {f"schema{i}": GrammarSpec(GrammarKind.JSON_SCHEMA, json.dumps(s))
           for i, s in enumerate(SCHEMAS)}
    out["json_object"] = GrammarSpec(GrammarKind.JSON_OBJECT)
    out["tools_required"] = GrammarSpec(GrammarKind.STRUCTURAL_TAG, json.dumps(
        hermes.structural_tag(TOOLS, parallel=True, special_tokens=specials)))
    out["tool_named"] = GrammarSpec(GrammarKind.STRUCTURAL_TAG, json.dumps(
        hermes.structural_tag(TOOLS[:1], parallel=False, special_tokens=specials)))
    return out


def compile_times(model: Path, vocab: int) -> dict[str, float]:
    """Milliseconds per spec, cold (a fresh compiler each time: no cache)."""
    eos = read_special_ids(model).eos_ids
    t0 = time.perf_counter()
    GrammarCompilerPool(model, vocab, eos)._compiler.result()  # noqa: SLF001
    out = {"tokenizer_info": (time.perf_counter() - t0) * 1e3}
    for name, spec in specs(model).items():
        pool = GrammarCompilerPool(model, vocab, eos)
        pool._compiler.result()  # noqa: SLF001
        t0 = time.perf_counter()
        pool.compile(spec)
        out[name] = (time.perf_counter() - t0) * 1e3
    return out


def step_times(model: Path, c: int, grammar: GrammarSpec | None, n_constrained: int
               ) -> dict[str, float]:
    """Mean wall time of steps that ran `c` sequences' active blocks, and tokens/forward."""
    engine = Engine(engine_config(str(model), max_running_requests=c, num_pages=2048))
    for i in range(c):
        g = grammar if i < n_constrained else None
        params = SamplingParams(max_tokens=400 if g else 48, ignore_eos=g is None)
        engine.add_request(GenerateRequest(f"r{i}", tuple(make_prompt(model, 32, seed=i)),
                                           params, grammar=g))
    full, tokens, rows = [], 0, 0
    while engine.has_work():
        r = engine.step()
        if r.stats.num_logit_rows == c and r.stats.num_tokens == 32 * c:  # decode-only steps
            full.append(r.stats.step_time)
            tokens += r.stats.tokens_committed
            rows += r.stats.num_logit_rows
    return {"steps": len(full), "step_ms": statistics.mean(full) * 1e3 if full else 0.0,
            "tokens_per_forward": tokens / rows if rows else 0.0}


def http_workload(model: Path) -> dict[str, float]:
    srv = RemoteServer(model, "--num-pages", "2048", "--max-running-requests", "32")
    out = {}
    try:
        for name, fn in (("json_schema", schema_request), ("tools_required",
                                                             required_tool_request)):
            s0 = srv.metric("unmask:tokens_per_forward_sum") if out else 0.0
            n0 = srv.metric("unmask:tokens_per_forward_count") if out else 0.0

            async def go(fn=fn) -> None:  # noqa: ANN001
                client = srv.async_client(timeout=300)
                await gather_limited(200, 32, lambda i: fn(client, i, i % 2 == 0))

            t0 = time.perf_counter()
            asyncio.run(go())
            out[f"{name}_wall_s"] = time.perf_counter() - t0
            s1 = srv.metric("unmask:tokens_per_forward_sum")
            n1 = srv.metric("unmask:tokens_per_forward_count")
            out[f"{name}_tokens_per_forward"] = (s1 - s0) / (n1 - n0)
    finally:
        srv.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--skip-http", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_model(Path(tmp) / "m", arch="llada2", seed=0)
        vocab = json.loads((model / "config.json").read_text())["vocab_size"]
        c = args.concurrency
        schema = specs(model)["schema0"]
        result = {
            "date": time.strftime("%Y-%m-%d"), "concurrency": c,
            "compile_ms": compile_times(model, vocab),
            "unconstrained": step_times(model, c, None, 0),
            "constrained_all": step_times(model, c, schema, c),
            "constrained_half": step_times(model, c, schema, c // 2),
        }
        if not args.skip_http:
            result["http_200_plus_200"] = http_workload(model)
    print(json.dumps(result, indent=2))
    u, a = result["unconstrained"]["step_ms"], result["constrained_all"]["step_ms"]
    print(f"step time at c={c}: unconstrained {u:.1f} ms, all constrained {a:.1f} ms "
          f"(x{a / u:.2f}), half constrained {result['constrained_half']['step_ms']:.1f} ms")


if __name__ == "__main__":
    main()
