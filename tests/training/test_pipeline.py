"""The whole recipe at toy scale: data → tokenizer → AR pretraining → AR SFT → WSD conversion →
diffusion SFT (CAP and no-CAP) → merge → export; losses fall, and the exported checkpoints
load in the engine, match the spec-written reference forward, and generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from server.core import SamplingParams
from server.engine.llm import LLM
from server.model.config import ModelConfig
from server.model.loader import load_model
from tests.reference.model import load_reference
from training import pipeline
from training.model import forward
from training.objectives import bd_mask


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("toy")
    return out, pipeline.run(out, "toy", work=out / "work", threads=1)


def _vals(summary: dict, stage: str) -> list[float]:
    return [r["val"] for r in summary["log"] if r.get("stage") == stage and "val" in r]


def test_every_stage_lowers_its_loss(toy: tuple[Path, dict]) -> None:
    _, s = toy
    for stage in ("ar_pretrain", "ar_sft", "sft_cap", "sft_nocap"):
        vals = _vals(s, stage)
        assert vals[-1] < vals[0], (stage, vals)
    ar = s["ar_pretrain"]
    assert sum(ar[-3:]) < sum(ar[:3])
    # conversion: the diffusion loss right after leaving the AR weights vs at the end
    assert min(_vals(s, "convert")[1:]) < _vals(s, "convert")[0] + 0.5
    assert s["wsd"]["blocks"][-1][1] == pytest.approx(1.0)
    assert len(s["sft_cap_merged_from"]) == pipeline.SCALES["toy"].merge_k
    # the no-CAP comparison is merged from the very steps the CAP run chose
    assert sorted(s["sft_nocap_merged_steps"]) == sorted(s["sft_cap_merged_steps"])


def test_exports_are_checkpoints_the_engine_serves(toy: tuple[Path, dict]) -> None:
    out, _ = toy
    for d, arch in ((out / "llada2", "LLaDA2MoeModelLM"), (out / "ling2",
                                                          "BailingMoeV2ForCausalLM"),
                    (out / "work" / "llada2-nocap", "LLaDA2MoeModelLM")):
        assert json.loads((d / "config.json").read_text())["architectures"] == [arch]
    llm = LLM(str(out / "llada2"), device="cpu", block_size=8)
    o = llm.chat([{"role": "user", "content": "Write a function named add."}],
                 SamplingParams(max_tokens=16))
    assert o.error is None and o.finish_reason in ("stop", "length") and o.stats.steps >= 1
    ar = LLM(str(out / "ling2"), device="cpu")
    o = ar.generate(["def add(a, b):"], SamplingParams(max_tokens=8, ignore_eos=True))[0]
    assert len(o.token_ids) == 8


def test_training_forward_matches_the_reference_on_the_export(toy: tuple[Path, dict]) -> None:
    out, _ = toy
    d = out / "llada2"
    cfg = ModelConfig.from_dict(json.loads((d / "config.json").read_text()))
    model = load_model(d, cfg, torch.float32, torch.device("cpu"))
    ids = torch.randint(0, cfg.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    doc = torch.zeros_like(ids)
    # x_0 half of the Eq. 3 mask is block-causal: it must equal the served model's attention
    mask = bd_mask(doc, 8)[:, :, 16:, 16:]
    with torch.no_grad():
        ours = model.compute_logits(forward(model, ids, torch.arange(16)[None], mask)[0])
    blocks = torch.arange(16) // 8
    ref = load_reference(d).forward(ids[0], blocks[None, :] <= blocks[:, None])
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=2e-4)


def test_examples_command_serves_the_export_and_records_every_exchange(
        toy: tuple[Path, dict], tmp_path: Path) -> None:
    from training.examples import CODE, TOOL_ASKS, main

    out = tmp_path / "served.jsonl"
    assert main(["--model", str(toy[0] / "llada2"), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(CODE) + 2 * len(TOOL_ASKS) + 1
    assert all(r["finish"] in ("stop", "length", "tool_calls") for r in rows)
    # tool_choice "required": the server's grammar forces a call to an offered tool (the toy
    # model may run out of tokens inside the arguments); a finished call is exactly one
    required = [r for r in rows if r.get("tool_choice") == "required"]
    assert len(required) == len(TOOL_ASKS)
    for r in required:
        if r["finish"] == "tool_calls":
            assert len(r["tool_calls"]) == 1 and r["tool_calls"][0]["name"] in r["tools"]
            json.loads(r["tool_calls"][0]["arguments"])
        else:
            name = json.loads(r["content"].split("\n")[1].split(', "arguments"')[0] + "}")
            assert name["name"] in r["tools"], r


def test_eval_command_reports_quality_tpf_table_and_tps(toy: tuple[Path, dict],
                                                        tmp_path: Path) -> None:
    from training.eval import BLOCKS, THRESHOLDS, main

    out, _ = toy
    assert main(["--dllm", str(out / "llada2"), "--ar", str(out / "ling2"), "--nocap",
                 str(out / "work" / "llada2-nocap"), "--out", str(tmp_path), "--scale", "toy",
                 "--limit", "2", "--tps-concurrency", "1", "--tps-prompts", "2"]) == 0
    res = json.loads((tmp_path / "eval.json").read_text())
    for name in ("dllm_cap", "dllm_nocap", "ar"):
        q = res[name]["quality"]
        assert 0 <= q["pass_rate"] <= 1 and 0 <= q["tool_call_exact"] <= q["tool_call_valid"] <= 1
        assert res[name]["val_loss"] > 0
    for name in ("dllm_cap", "dllm_nocap"):
        table = res[name]["tpf"]
        assert len(table) == len(BLOCKS) * len(THRESHOLDS)
        assert all(c["forwards"] > 0 and c["tokens"] / c["forwards"] == pytest.approx(
            c["pooled"], abs=1e-3) for c in table.values())
    # the toy model's forced tokens may all be special (no text chunk → counted failed)
    n_code = sum(res["held_out"].get(k, 0) for k in ("write", "complete"))
    for run, n in (("heldout", n_code), ("random", 2)):
        assert {t: [(r["max_concurrency"], r["completed"] + r["failed"]) for r in rs]
                for t, rs in res["tps"][run].items()} == {"dllm": [(1, n)], "ar": [(1, n)]}
    assert res["tps"]["random"]["ar"][0]["output_throughput"] > 0
