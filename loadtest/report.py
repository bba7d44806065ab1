"""Results → a human table, a JSON file (vLLM's key names per run), the side-by-side comparison
(ratios and the crossover concurrency) and PNG charts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROWS = [("completed", "completed", "{:.0f}"), ("failed", "failed", "{:.0f}"),
        ("duration", "duration (s)", "{:.2f}"),
        ("request_throughput", "requests/s", "{:.2f}"),
        ("output_throughput", "output tok/s", "{:.1f}"),
        ("total_token_throughput", "total tok/s", "{:.1f}"),
        ("median_ttft_ms", "TTFT median (ms)", "{:.1f}"),
        ("p99_ttft_ms", "TTFT p99 (ms)", "{:.1f}"),
        ("median_tpot_ms", "TPOT median (ms)", "{:.2f}"),
        ("p99_tpot_ms", "TPOT p99 (ms)", "{:.2f}"),
        ("median_itl_ms", "ITL median (ms)", "{:.2f}"), ("p99_itl_ms", "ITL p99 (ms)", "{:.2f}"),
        ("median_e2el_ms", "E2E median (ms)", "{:.1f}"), ("p99_e2el_ms", "E2E p99 (ms)", "{:.1f}"),
        ("request_goodput", "goodput (req/s)", "{:.2f}"),
        ("server_tokens_per_forward", "server tokens/forward", "{:.2f}"),
        ("server_steps_per_block", "server steps/block", "{:.2f}")]


def _fmt(v: Any, f: str) -> str:
    return "-" if v is None else f.format(v)


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    """Columns: each target at each concurrency level."""
    cols = [(name, run) for name, runs in results.items() for run in runs]
    heads = [f"{n} c={r['max_concurrency'] or 'all'}" for n, r in cols]
    width = max([24, *map(len, heads)]) + 2
    lines = ["".ljust(24) + "".join(h.rjust(width) for h in heads)]
    for key, label, f in ROWS:
        lines.append(label.ljust(24) + "".join(_fmt(r.get(key), f).rjust(width)
                                                for _, r in cols))
    for name, r in cols:
        errors = sorted({e for e in r["errors"] if e})
        if errors:
            lines.append(f"{name} c={r['max_concurrency']}: {r['failed']} failed: "
                         + "; ".join(e[:120] for e in errors[:3]))
    return "\n".join(lines)


def compare(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Ratios of the first target to each other one per concurrency level, and the crossover:
    the first level where the output-throughput ordering differs from the lowest level's."""
    names = list(results)
    if len(names) < 2:
        return {}
    base = names[0]
    out: dict[str, Any] = {}
    for other in names[1:]:
        levels, ratios, tpot = [], [], []
        for a, b in zip(results[base], results[other], strict=True):
            levels.append(a["max_concurrency"])
            ratios.append(a["output_throughput"] / b["output_throughput"]
                          if b["output_throughput"] else None)
            tpot.append(a["median_tpot_ms"] / b["median_tpot_ms"]
                        if b["median_tpot_ms"] else None)
        valid = [(lv, r) for lv, r in zip(levels, ratios, strict=True) if r is not None]
        crossover = None
        if valid:
            first = valid[0][1] >= 1
            crossover = next((lv for lv, r in valid if (r >= 1) != first), None)
        out[f"{base}_vs_{other}"] = {"concurrency": levels, "output_throughput_ratio": ratios,
                                     "median_tpot_ratio": tpot, "crossover_concurrency": crossover}
    return out


def comparison_text(cmp: dict[str, Any]) -> str:
    lines = []
    for key, c in cmp.items():
        lines.append(f"{key}: output throughput ratio by concurrency "
                     + ", ".join(f"c={lv}: {'-' if r is None else f'{r:.2f}x'}"
                                 for lv, r in zip(c["concurrency"],
                                                  c["output_throughput_ratio"], strict=True)))
        lines.append(f"  crossover concurrency: {c['crossover_concurrency'] or 'none in range'}")
    return "\n".join(lines)


def save_json(path: Path, results: dict[str, list[dict[str, Any]]], meta: dict[str, Any]
              ) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = meta | {"targets": results, "comparison": compare(results)}
    path.write_text(json.dumps(body, indent=2, ensure_ascii=False))


def plot(out_dir: Path, results: dict[str, list[dict[str, Any]]]) -> list[Path]:
    """throughput.png and tpot.png (vs concurrency), ttft_cdf.png and e2e_cdf.png (each
    target at its highest level)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, ylabel, fname in (("output_throughput", "output tokens/s", "throughput.png"),
                               ("median_tpot_ms", "median TPOT (ms)", "tpot.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, runs in results.items():
            xs = [r["max_concurrency"] or r["num_prompts"] for r in runs]
            ax.plot(xs, [r[key] for r in runs], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="concurrency", ylabel=ylabel)
        ax.legend()
        fig.tight_layout()
        paths.append(out_dir / fname)
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    for key, label, fname in (("ttfts", "TTFT (s)", "ttft_cdf.png"),
                              ("latencies", "E2E latency (s)", "e2e_cdf.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, runs in results.items():
            r = runs[-1]
            ok = np.sort([v for v, e in zip(r[key], r["errors"], strict=True) if not e])
            if len(ok):
                ax.plot(ok, np.arange(1, len(ok) + 1) / len(ok),
                        label=f"{name} c={r['max_concurrency']}")
        ax.set(xlabel=label, ylabel="fraction of requests")
        ax.legend()
        fig.tight_layout()
        paths.append(out_dir / fname)
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths
