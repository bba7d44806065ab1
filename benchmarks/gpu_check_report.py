"""The GPU check's report: summary.json and summary.md (rewritten whole after every section),
and `--finalize`, which adds the shell's pytest and install outcomes."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

from gpu_check_lib import ROOT, SECTIONS, TOP_KERNELS


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return head + (f" (+{len(dirty.splitlines())} uncommitted paths)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git metadata)"


# -- summary -------------------------------------------------------------------------------------
def write_summary(out: Path, result: dict[str, Any]) -> None:
    """Each file replaced whole (a kill mid-write leaves the previous version)."""
    for name, text in (("summary.json", json.dumps(result, indent=2, default=str) + "\n"),
                       ("summary.md", render_md(result))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def _f(x: Any, fmt: str = ".2f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return format(x, fmt) if isinstance(x, int | float) else str(x)


def _status(sec: dict[str, Any]) -> str:
    s = sec.get("status", "?")
    why = sec.get("reason") or sec.get("error")
    return s + (f": {why}" if why and s != "ok" else "")


def render_md(r: dict[str, Any]) -> str:
    m = r["meta"]
    env = r.get("env", {})
    L = ["# GPU check (issue 18)", "",
         f"- command: `{m.get('command')}`", f"- device: {m.get('device', '?')}",
         f"- date: {m.get('date')}", f"- commit: {m.get('commit')}",
         f"- shape: {m.get('shape')}; python {m.get('python')}, torch {env.get('torch', '?')},"
         f" triton {env.get('triton', '?')}; elapsed {m.get('elapsed_s')} s of a "
         f"{m.get('budget_s')} s budget", ""]
    for n in r.get("notes", []):
        L.append(f"> {n}")
    L += ["", "| section | status |", "|---|---|"]
    L += [f"| {s} | {_status(r[s]) if isinstance(r.get(s), dict) else '-'} |" for s in SECTIONS]
    pk = r.get("peaks", {})
    if pk.get("status") == "ok":
        L += ["", "## Ceilings (measured)", "",
              f"copy bandwidth {_f(pk['copy_bandwidth_GBps'], '.0f')} GB/s (read + write), "
              f"{pk['matmul_dtype']} matmul {_f(pk['matmul_peak_TFLOPs'], '.3g')} TFLOP/s"
              + (f"; vs the H200 datasheet (4.8 TB/s, 989 TFLOP/s): "
                 f"{_f(pk['copy_vs_datasheet'], '.0%')}, {_f(pk['matmul_vs_datasheet'], '.0%')}"
                 if "datasheet" in pk else "")]
    kr = r.get("kernels", {})
    if kr.get("status") == "ok":
        L += ["", f"## Acceptance kernel ({kr['acceptance_backend']}, logits "
              f"{kr['acceptance_logits_dtype']}, V {kr['vocab']}; target >= 80 % of copy "
              "bandwidth)", "", "| S x 32 rows | MiB | us | GB/s | of copy bw |",
              "|---|---|---|---|---|"]
        L += [f"| {a['S']} | {_f(a['logits_MiB'], '.1f')} | {_f(a['us'], '.1f')} | "
              f"{_f(a['GBps'], '.0f')} | {_f(a['fraction_of_copy_bw'], '.0%')} |"
              for a in kr["acceptance"]]
        L += ["", f"## MoE kernel ({kr['moe_shape']})", "",
              "| backend | tokens | experts | us | TFLOP/s | of matmul peak | weight GB/s "
              "| of copy bw |",
              "|---|---|---|---|---|---|---|---|"]
        for b, rows in kr["moe"].items():
            for x in rows:
                if "error" in x:
                    L.append(f"| {b} | error: {x['error']} | | | | | | |")
                    continue
                L.append(f"| {b} | {x['tokens']} | {x['experts_touched']} | "
                         f"{_f(x['us'], '.1f')} | {_f(x['TFLOPs'], '.1f')} | "
                         f"{_f(x['fraction_of_matmul_peak'], '.0%')} | "
                         f"{_f(x['weight_GBps'], '.0f')} | {_f(x['fraction_of_copy_bw'], '.0%')} |")
    gv = r.get("graphs_vs_eager", {})
    if gv.get("status") == "ok":
        lg = gv.get("logits", {})
        ex = gv.get("experts_touched_eager", {})
        L += ["", "## CUDA graphs vs eager (greedy, same dummy weights)", "",
              f"- graph engine uses graphs: {gv['graphs_uses_graphs']} (replays "
              f"{_f(gv.get('graphs_graph_replays'))} over {gv['graphs_steps']} steps); "
              f"attention {gv['graphs_attention_backend']}, acceptance "
              f"{gv['graphs_acceptance_backend']}",
              f"- tokens identical: {gv['tokens_identical']}/{gv['requests']} requests "
              f"({gv['tokens_per_request']} tokens; first divergence {gv['first_divergence']})",
              f"- logits of step {lg.get('step', '-')}: {lg.get('status')}; max abs diff "
              f"{_f(lg.get('max_abs_diff'), '.3g')} ({_f(lg.get('max_rel_to_max'), '.2g')} of "
              f"the largest logit), argmax agreement {_f(lg.get('argmax_agreement'), '.1%')}",
              f"- routed experts per MoE layer on one eager step of {ex.get('tokens')} tokens: "
              f"measured {_f(ex.get('measured_mean'), '.1f')} (min {ex.get('measured_min')}), "
              f"analytic (uniform routing) {_f(ex.get('analytic'), '.1f')}"]
        if gv.get("note"):
            L.append(f"- note: {gv['note']}")
    for key, title in (("diffusion", "Diffusion step"), ("diffusion_eager",
                                                         "Diffusion step, enforce_eager"),
                       ("ar", "AR decode step (Ling-2.0 twin)"),
                       ("profiles", "Profiles of the graphed diffusion step")):
        sec = r.get(key, {})
        if sec.get("status") != "ok":
            continue
        if key == "profiles":
            L += ["", f"## {title}"]
            _render_profiles(L, sec["runs"])
            continue
        eng = sec.get("engine", {})
        L += ["", f"## {title} (uses_graphs {sec.get('uses_graphs')}, attention "
              f"{eng.get('attention_backend')}; target >= 60 % of roofline)", "",
              "| c | ms/step (median) | roofline ms | bound | of roofline | tokens fwd | "
              "graph steps | host syncs/step | TPF | out tok/s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for x in sec["runs"]:
            if "error" in x:
                L.append(f"| {x['concurrency']} | error: {x['error']} | | | | | | | | |")
                continue
            ro = x["roofline"]
            L.append(f"| {x['concurrency']} | {_f(x['step_ms_median'])} | "
                     f"{_f(ro['roofline_ms'])} | {ro['bound']} | "
                     f"{_f(x['fraction_of_roofline'], '.0%')} | "
                     f"{_f(x['tokens_forwarded_median'], '.0f')} | "
                     f"{_f(x['graph_replayed_steps'])}/{x['steps']} | "
                     f"{_f(x['host_syncs_per_step'])} | {_f(x['tokens_per_forward'])} | "
                     f"{_f(x['output_tokens_per_s'], '.0f')} |")
        if sec.get("graph_counters"):
            L.append(f"\ngraph runner counters after the sweep: {sec['graph_counters']}")
        if sec.get("skipped_concurrency"):
            L.append(f"\nskipped (time budget): c = {sec['skipped_concurrency']}")
        _render_profiles(L, sec["runs"])
    for key in ("pytest", "install"):
        sec = r.get(key, {})
        if sec.get("status") not in (None, "pending"):
            L += ["", f"## {key}", "", f"{_status(sec)}" + (f"; {sec['detail']}"
                                                           if sec.get("detail") else "")]
    return "\n".join(L) + "\n"


def _render_profiles(L: list[str], runs: list[dict[str, Any]]) -> None:
    for x in runs:
        pr = x.get("profile")
        if not pr:
            continue
        if pr.get("no_cuda_events"):
            L += ["", f"### Profile c={x['concurrency']}: the profiler recorded no CUDA "
                  "kernel (CUPTI after graph capture?)"]
            continue
        at = pr["attention"]
        what = "CUDA kernels" if pr.get("gpu_busy_fraction") is not None else "CPU ops"
        L += ["", f"### Profile c={x['concurrency']}: top {TOP_KERNELS} {what} (3 steps; "
              f"{_f(pr['wall_ms_per_step'])} ms/step wall, GPU busy "
              f"{_f(pr['gpu_busy_fraction'], '.0%')})", "",
              f"attention evidence: {', '.join(at['kinds'])}; SDPA ops "
              f"{at['sdpa_ops'] or '-'}", "",
              "| # | kernel | calls | total us | avg us | share |", "|---|---|---|---|---|---|"]
        L += [f"| {i} | `{k['name']}` | {k['calls']} | {_f(k['total_us'], '.0f')} | "
              f"{_f(k['avg_us'], '.1f')} | {_f(k['share'], '.1%')} |"
              for i, k in enumerate(pr["top"], 1)]


def finalize(args: argparse.Namespace) -> int:
    """Add the shell's pytest and install outcomes to the summary (no torch import)."""
    out = Path(args.out)
    path = out / "summary.json"
    result = json.loads(path.read_text()) if path.exists() else {
        "meta": {"command": os.environ.get("GPU_CHECK_COMMAND", "?"), "note":
                 "the check wrote no summary (killed or crashed: see check_log.txt)"},
        "notes": []}
    if args.pytest_rc is None:
        result["pytest"] = {"status": "skipped", "reason": args.pytest_note or "not run"}
    else:
        last = ""
        log = out / args.pytest_log if args.pytest_log else None
        if log is not None and log.exists():
            lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
            last = lines[-1] if lines else ""
        status = {0: "ok", 5: "ok"}.get(args.pytest_rc, "failed")
        if args.pytest_rc in (124, 137):
            status = "timeout"
        result["pytest"] = {"status": status, "rc": args.pytest_rc, "detail": last,
                            "reason": f"rc {args.pytest_rc} (raw output {args.pytest_log})"}
    result["install"] = {"status": "ok" if args.install_rc == 0 else
                         "skipped" if args.install_rc is None else "failed",
                         "rc": args.install_rc,
                         "reason": args.install_note or "",
                         "detail": "imports come from the source tree (PYTHONPATH = the "
                         "repository root) either way"}
    if args.check_rc is not None:
        result["meta"]["check_rc"] = args.check_rc
    for s in SECTIONS[:-2]:  # what the check never reached (killed, or crashed)
        sec = result.get(s)
        if not isinstance(sec, dict) or sec.get("status") == "pending":
            result[s] = {"status": "not reached", "reason": f"the check ended (rc "
                         f"{args.check_rc}) before this section: see check_log.txt"}
    result["meta"].setdefault("commit", os.environ.get("GPU_CHECK_COMMIT") or git_commit())
    write_summary(out, result)
    return 0
