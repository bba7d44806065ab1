"""benchmarks/gpu_check.sh end to end on CPU (`--device cpu --tiny`), with the packages the GPU
machine lacks made unimportable; and its Python part importing without them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# absent on the GPU machine (or possibly absent: only torch, triton, numpy are sure)
MISSING = ("fastapi", "uvicorn", "pydantic", "starlette", "transformers", "tokenizers",
           "huggingface_hub", "tqdm", "safetensors", "jinja2", "xgrammar", "prometheus_client",
           "httpx", "matplotlib")
SECTIONS = ("meta", "notes", "env", "peaks", "kernels", "graphs_vs_eager", "diffusion",
            "diffusion_eager", "ar", "profiles", "pytest", "install")


def test_gpu_check_runs_on_cpu_without_the_missing_packages(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    # every Python process the script starts imports this first: a None entry in sys.modules
    # makes `import name` raise ModuleNotFoundError and find_spec(name) answer None
    (site / "sitecustomize.py").write_text(
        f"import sys\nfor _name in {MISSING!r}:\n    sys.modules[_name] = None\n")
    out = tmp_path / "out"
    env = os.environ | {"PY": sys.executable, "PYTHONPATH": str(site),
                        "GPU_CHECK_BUDGET_S": "300"}
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out),
                        "--device", "cpu", "--tiny", "--no-install"],
                       env=env, capture_output=True, text=True, timeout=400)
    log = (out / "check_log.txt").read_text() if (out / "check_log.txt").exists() else ""
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:] + log[-4000:]
    files = sorted(p.name for p in out.iterdir())
    assert "summary.md" in files and "summary.json" in files
    assert len(files) <= 6, files
    data = json.loads((out / "summary.json").read_text())
    assert set(SECTIONS) <= set(data), sorted(data)
    for name in ("env", "peaks", "kernels", "graphs_vs_eager", "diffusion", "diffusion_eager",
                 "ar", "profiles", "pytest"):
        assert data[name]["status"] == "ok", (name, data[name])
    assert data["install"]["status"] == "skipped"
    assert not data["env"]["has_transformers"] and not data["env"]["has_tokenizers"]
    meta = data["meta"]
    assert meta["command"].startswith("bash benchmarks/gpu_check.sh") and meta["date"]
    assert meta["commit"] and meta["device"].startswith("cpu")
    for mode in ("diffusion", "ar"):
        runs = data[mode]["runs"]
        assert [x["concurrency"] for x in runs] == [1, 8, 32, 128], runs
        assert all(x["step_ms_median"] > 0 and x["fraction_of_roofline"] > 0 for x in runs)
        assert all(x["host_syncs_per_step"] is None for x in runs)  # CUDA only
    diff = data["diffusion"]["runs"]
    # every sequence forwards its active block of 32 (a folded commit adds at most as much)
    assert all(32 * x["concurrency"] <= x["tokens_forwarded_median"] <= 64 * x["concurrency"]
               for x in diff), diff
    profiles = data["profiles"]["runs"]  # last, on the graphed engine: c = 1 and 128
    assert [x["concurrency"] for x in profiles] == [1, 128]
    assert all(x["profile"]["top"] for x in profiles), profiles
    assert "Profile c=128" in (out / "summary.md").read_text()
    assert data["graphs_vs_eager"]["tokens_identical"] == data["graphs_vs_eager"]["requests"]
    assert data["graphs_vs_eager"]["logits"]["max_abs_diff"] == 0.0  # CPU: both eager
    md = (out / "summary.md").read_text()
    assert "# GPU check" in md and "Diffusion step" in md and "AR decode step" in md
    assert "Profile c=128" in md


def test_gpu_check_imports_without_api_packages() -> None:
    """The script and every engine module it imports load with the missing packages refused
    by an import hook (the GPU machine has none of them)."""
    code = textwrap.dedent(f"""
        import importlib.abc, sys

        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {MISSING!r}:
                    raise ModuleNotFoundError(f"{{name}} refused (test)", name=name)
                return None

        sys.meta_path.insert(0, Refuse())
        sys.path.insert(0, {str(ROOT)!r})
        import runpy
        ns = runpy.run_path({str(ROOT / "benchmarks" / "gpu_check.py")!r})
        import server.engine.engine, server.engine.llm, server.model.loader, server.model.moe
        import server.tiny.generate, unmask_kernels.acceptance, unmask_kernels.moe
        try:
            import fastapi
        except ImportError:
            print("refused")
        print(ns["SECTIONS"])
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "refused" in r.stdout and "graphs_vs_eager" in r.stdout
