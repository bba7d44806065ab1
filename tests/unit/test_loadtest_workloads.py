"""Workloads are reproducible from their seed and parse the documented file formats; arrivals
follow their distribution; the comparison finds the crossover."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from loadtest.report import compare
from loadtest.runner import intervals
from loadtest.workloads import (
    jsonl_workload,
    random_workload,
    shared_prefix_workload,
    sharegpt_workload,
)


def test_random_workload_is_seeded_and_respects_the_range() -> None:
    a = random_workload(50, 100, 20, 0.5, seed=3)
    assert a == random_workload(50, 100, 20, 0.5, seed=3)
    assert a != random_workload(50, 100, 20, 0.5, seed=4)
    lens = [len(str(w.prompt).split()) for w in a]
    assert min(lens) >= 50 and max(lens) <= 150 and len(set(lens)) > 5
    assert all(10 <= w.output_len <= 30 for w in a)


def test_shared_prefix_groups_share_their_head() -> None:
    items = shared_prefix_workload(6, 2, 10, 5, 8, seed=0)
    heads = [" ".join(str(w.prompt).split()[:10]) for w in items]
    assert heads[0] == heads[2] == heads[4] != heads[1] == heads[3]


def test_jsonl_and_sharegpt_files(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "hello"}\n\n{"messages": [{"role": "user", "content": "hi"}], '
                 '"max_tokens": 7}\n')
    a, b = jsonl_workload(f, output_len=32)
    assert (a.prompt, a.output_len, a.chat) == ("hello", 32, False)
    assert (b.messages, b.output_len, b.chat) == ([{"role": "user", "content": "hi"}], 7, True)
    g = tmp_path / "sharegpt.json"
    conv = lambda p, r: {"conversations": [{"from": "human", "value": p},  # noqa: E731
                                           {"from": "gpt", "value": r}]}
    g.write_text(json.dumps([conv("one two three four five", "a b c d e f"),
                             conv("too short", "a b c d e"), conv("w " * 1100, "a b c d"),
                             {"conversations": []}]))
    (only,) = sharegpt_workload(g, 10, seed=0)
    assert only.output_len == 6 and only.messages[0]["content"].startswith("one")


def test_arrival_intervals() -> None:
    assert intervals(3, math.inf, 1.0, 0) == [0.0, 0.0, 0.0]
    gaps = np.array(intervals(20000, 10.0, 1.0, 0))
    assert abs(gaps.mean() - 0.1) < 0.005 and abs(gaps.std() - 0.1) < 0.005  # exponential
    bursty = np.array(intervals(20000, 10.0, 0.25, 0))
    assert abs(bursty.mean() - 0.1) < 0.01 and bursty.std() > 0.18  # gamma, shape 0.25


def test_crossover_is_where_the_ordering_flips() -> None:
    run = lambda c, tput, tpot: {"max_concurrency": c, "output_throughput": tput,  # noqa: E731
                                 "median_tpot_ms": tpot}
    results = {"dllm": [run(1, 200, 5), run(4, 500, 8), run(16, 800, 20)],
               "ar": [run(1, 100, 10), run(4, 450, 9), run(16, 1000, 16)]}
    c = compare(results)["dllm_vs_ar"]
    assert c["output_throughput_ratio"] == [2.0, 500 / 450, 0.8]
    assert c["crossover_concurrency"] == 16
