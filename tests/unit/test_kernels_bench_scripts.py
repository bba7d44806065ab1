"""The GPU benchmark scripts import and answer --help on a CPU box; the roofline model is sane
at the real mini shape (memory-bound for one block, compute-bound for a huge batch)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from server.model.config import ModelConfig
from server.tiny.generate import model_config

ROOT = Path(__file__).resolve().parents[2]


def _load_script(name: str):  # noqa: ANN202 - a module
    """benchmarks/ is a folder of scripts, not a package: load one by path."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "benchmarks" /
                                                  f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", ["benchmarks/gpu_step.py", "benchmarks/gpu_kernels.py"])
def test_help_runs_without_cuda(script: str) -> None:
    out = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True,
                         text=True, check=True, timeout=60)
    assert "usage:" in out.stdout and "--out" in out.stdout and "bandwidth" in out.stdout


def test_roofline_at_mini_shape() -> None:
    cfg = ModelConfig.from_dict(model_config("llada2", 157184, 0, config_of="mini"))
    bw, peak = 3.0e12, 700e12  # H100-like ceilings, only for this arithmetic check
    roofline = _load_script("gpu_step").roofline
    one = roofline(cfg, [(32, 544)], [200] * 19, bw, peak)
    assert one["bound"] == "memory"
    assert 1.0 < one["weights_GB"] < 40.0  # non-expert weights + touched experts, bf16
    big = roofline(cfg, [(32, 544)] * 512, [256] * 19, bw, peak)
    assert big["bound"] == "compute" and big["GFLOP"] > 100 * one["GFLOP"]
