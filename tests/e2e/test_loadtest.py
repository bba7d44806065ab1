"""The load tester against real servers: totals match what the servers counted, comparison mode
writes its JSON and charts, and failing targets are failed requests with reasons, not crashes."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import matplotlib.image
from transformers import PreTrainedTokenizerFast

from loadtest.runner import LoadSpec, Target, run_sweep
from loadtest.workloads import random_workload, shared_prefix_workload, tools_workload
from server.cli import main
from tests.e2e.server_harness import API_KEY, RemoteServer, free_port


def test_totals_equal_the_servers_counters(tiny_llada2: Path) -> None:
    srv = RemoteServer(tiny_llada2, "--num-pages", "1024")
    try:
        tok = PreTrainedTokenizerFast.from_pretrained(str(tiny_llada2))
        items = (random_workload(12, 40, 30, 0.5, seed=1, tokenizer=tok)
                 + shared_prefix_workload(6, 2, 64, 8, 20, seed=2, tokenizer=tok)
                 + tools_workload(4, 30, seed=3))
        target = Target("t", srv.url + "/v1", api_key=API_KEY)
        gen0 = srv.metric("unmask:generation_tokens_total", 0.0)
        prompt0 = srv.metric("unmask:prompt_tokens_total", 0.0)
        (run,) = run_sweep(target, items, LoadSpec(max_concurrency=8, num_warmups=0,
                                                   request_rate=50, burstiness=0.5), None)
        assert run["failed"] == 0 and run["completed"] == 22, run["errors"]
        assert run["total_output_tokens"] == srv.metric("unmask:generation_tokens_total") - gen0
        assert run["total_input_tokens"] == srv.metric("unmask:prompt_tokens_total") - prompt0
        assert run["max_concurrent_requests"] <= 8
        assert run["server_tokens_per_forward"] is not None and run["mean_ttft_ms"] > 0
    finally:
        srv.stop()


def test_compare_mode_writes_json_and_charts(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    assert main(["bench", "compare", "--out", str(out), "--sweep-concurrency", "1,2",
                 "--num-prompts", "4", "--output-len", "16", "--plot", str(out),
                 "--result-json", str(out / "report.json")]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["targets"]) == {"dllm", "ar"}
    for runs in report["targets"].values():
        assert [r["max_concurrency"] for r in runs] == [1, 2]
        assert all(r["failed"] == 0 and r["output_throughput"] > 0 for r in runs)
    cmp = report["comparison"]["dllm_vs_ar"]
    assert cmp["concurrency"] == [1, 2] and len(cmp["output_throughput_ratio"]) == 2
    for name in ("throughput", "tpot", "ttft_cdf", "e2e_cdf"):
        img = matplotlib.image.imread(out / f"{name}.png")
        assert img.shape[0] > 100 and img.shape[1] > 100


def test_compare_mode_takes_checkpoint_directories(tiny_llada2: Path, tmp_path: Path) -> None:
    from server.tiny import make_tiny_model

    ar = make_tiny_model(tmp_path / "ling2", arch="ling2", seed=0)
    out = tmp_path / "cmp"
    assert main(["bench", "compare", "--dllm", str(tiny_llada2), "--ar", str(ar), "--out",
                 str(out), "--sweep-concurrency", "2", "--num-prompts", "2", "--output-len",
                 "8", "--result-json", str(out / "report.json")]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [r["completed"] for r in report["targets"]["dllm"]] == [2]
    assert [r["completed"] for r in report["targets"]["ar"]] == [2]
    assert main(["bench", "compare", "--dllm", str(tiny_llada2)]) == 2  # --ar missing


def test_failing_targets_are_reported_not_raised(tiny_llada2: Path) -> None:
    items = random_workload(6, 16, 400, 0.0, seed=0)
    refused = Target("refused", f"http://127.0.0.1:{free_port()}/v1", model="m")
    (run,) = run_sweep(refused, items, LoadSpec(max_concurrency=2), None)
    assert run["failed"] == 6 and all("ConnectError" in e for e in run["errors"])

    srv = RemoteServer(tiny_llada2, "--num-pages", "1024", "--max-queued-requests", "1")
    try:
        target = Target("busy", srv.url + "/v1", api_key=API_KEY)
        (run,) = run_sweep(target, items, LoadSpec(ignore_eos=True), None)
        assert run["completed"] >= 1 and run["failed"] >= 1
        assert any(e.startswith("HTTP 503") for e in run["errors"])

        killer = threading.Timer(1.5, lambda: srv.proc.kill())
        killer.start()
        t0 = time.monotonic()
        (run,) = run_sweep(target, items * 3, LoadSpec(max_concurrency=1, ignore_eos=True,
                                                       request_rate=math.inf), None)
        assert time.monotonic() - t0 < 60
        assert run["failed"] >= 1 and all(e for e in run["errors"][-2:])
    finally:
        srv.stop()
