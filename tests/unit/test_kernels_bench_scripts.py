"""benchmarks/gpu_check.py answers --help on a CPU box; its roofline model is sane at the real
mini shape (memory-bound for one block, compute-bound for a large batch, routed experts
counted analytically); its summary renders from a partial result and `--finalize` fills in the
shell's steps."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from server.model.config import ModelConfig
from server.tiny.generate import model_config

ROOT = Path(__file__).resolve().parents[2]


def _load_script(name: str):  # noqa: ANN202 - a module
    """benchmarks/ is a folder of scripts, not a package: load one by path."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "benchmarks" /
                                                  f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_help_runs_without_cuda() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--help"],
                         capture_output=True, text=True, check=True, timeout=60)
    assert "usage:" in out.stdout and "--out" in out.stdout and "bandwidth" in out.stdout


def test_roofline_at_mini_shape() -> None:
    cfg = ModelConfig.from_dict(model_config("llada2", 157184, 0, config_of="mini"))
    g = _load_script("gpu_check")
    bw, peak = 4.0e12, 800e12  # H200-like ceilings, only for this arithmetic check
    one = g.roofline(cfg, [32], [544], 32, 2, bw, peak)
    assert one["bound"] == "memory"
    # 32 tokens touch ~163 of 256 experts per layer (uniform routing): ~2/3 of the weights
    assert 150 < one["experts_touched_per_layer"] < 180
    assert 15.0 < one["weights_GB"] < 25.0 and one["logits_GB"] < 0.03
    big = g.roofline(cfg, [32] * 128, [544] * 128, 32 * 128, 2, bw, peak)
    assert big["bound"] == "compute" and big["GFLOP"] > 100 * one["GFLOP"]
    assert abs(big["experts_touched_per_layer"] - 256) < 1e-6  # every expert
    ar = g.roofline(cfg, [1], [513], 1, 2, bw, peak)
    assert ar["bound"] == "memory" and ar["weights_GB"] < one["weights_GB"]
    assert g.experts_touched(256, 8, 0) == 0.0
    assert abs(g.experts_touched(256, 8, 1) - 8) < 1e-9


def test_summary_renders_partial_results_and_finalize(tmp_path: Path) -> None:
    g = _load_script("gpu_check")
    result = {"meta": {"command": "x", "date": "d", "commit": "c", "device": "cpu"},
              "notes": ["n"], **{s: {"status": "pending"} for s in g.SECTIONS}}
    result["diffusion"] = {"status": "error", "error": "boom"}
    g.write_summary(tmp_path, result)
    md = (tmp_path / "summary.md").read_text()
    assert "| diffusion | error: boom |" in md
    (tmp_path / "pytest_gpu.txt").write_text("....\n4 passed, 2 failed in 3.0s\n")
    assert g.main(["--out", str(tmp_path), "--finalize", "--pytest-rc", "1",
                   "--pytest-log", "pytest_gpu.txt", "--install-rc", "1",
                   "--install-note", "pip failed"]) == 0
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["pytest"]["status"] == "failed" and "2 failed" in data["pytest"]["detail"]
    assert data["install"]["status"] == "failed"
    assert "4 passed, 2 failed" in (tmp_path / "summary.md").read_text()


def test_attention_evidence_names_the_backend() -> None:
    g = _load_script("gpu_check")
    ev = g.attention_evidence(["aten::scaled_dot_product_attention",
                               "aten::_scaled_dot_product_efficient_attention",
                               "fmha_cutlassF_bf16_aligned_64x64_rf_sm80"])
    assert ev["kinds"] == ["mem_efficient"]
    assert g.attention_evidence(["void pytorch_flash::flash_fwd_kernel<X>"])["kinds"] == ["flash"]
    assert "none" in g.attention_evidence(["ampere_bf16_gemm"])["kinds"][0]
