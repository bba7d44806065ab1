"""Every rendered overlay's `unmask serve` command, run for real through its launch script with
`--check-config` appended: the engine's own start-up checks accept each flag set against the
real LLaDA2.0-mini/flash config shapes (config files only, no weights)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from server.tiny import make_tiny_model
from tests.deploy.manifests import OVERLAYS, one, rendered, serving_pods

SHAPES = {"inclusionAI/LLaDA2.0-mini": "mini", "inclusionAI/LLaDA2.0-flash": "flash",
          "inclusionAI/LLaDA2.1-mini": "mini", "inclusionAI/LLaDA2.1-flash": "flash"}
LWS_ENV = {"LWS_WORKER_INDEX": "1", "LWS_LEADER_ADDRESS": "unmask-0.unmask"}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shapes")
    return {s: make_tiny_model(root / s, config_of=s, weights=False) for s in ("mini", "flash")}


def check_config(pod: dict[str, Any], flags: dict[str, str], model: str,
                 tmp: Path) -> subprocess.CompletedProcess[str]:
    """The container's command with the ConfigMap as files and an `unmask` on PATH that is the
    real one plus `--check-config`."""
    c = next(c for c in pod["spec"]["containers"] if c["name"] == "unmask")
    (tmp / "flags").mkdir(parents=True)
    for k, v in flags.items():
        (tmp / "flags" / k).write_text(v)
    (tmp / "bin").mkdir()
    wrapper = tmp / "bin" / "unmask"
    wrapper.write_text(f'#!/bin/sh\nexec "{Path(sys.executable).parent / "unmask"}" "$@" '
                       "--check-config\n")
    wrapper.chmod(0o755)
    env = {e["name"]: e.get("value", "") for e in c.get("env", [])} | LWS_ENV
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in c.get("args", [])]
    script = c["command"][2].replace("/etc/unmask/serve", str(tmp / "flags"))
    return subprocess.run(["/bin/sh", "-c", script, *c["command"][3:], *args],
                          env={**os.environ, "PATH": f"{tmp / 'bin'}:/usr/bin:/bin",
                               "UNMASK_MODEL": model}, capture_output=True, text=True,
                          timeout=120)


def _model_of(pod: dict[str, Any], shapes: dict[str, Path]) -> str:
    c = next(c for c in pod["spec"]["containers"] if c["name"] == "unmask")
    hub = {e["name"]: e.get("value", "") for e in c.get("env", [])}["UNMASK_MODEL"]
    if not hub:
        return ""  # the embedded default model
    assert hub in SHAPES, f"{hub}: add its config shape to SHAPES"
    return str(shapes[SHAPES[hub]])


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[f"overlays/{o}" for o in OVERLAYS])
def test_every_overlay_passes_the_engine_checks(overlay: str, shapes: dict[str, Path],
                                                tmp_path: Path) -> None:
    resources = rendered(f"overlays/{overlay}")
    flags = dict(one(resources, "ConfigMap", "unmask-serve")["data"])
    pods = serving_pods(resources)
    assert pods
    for i, pod in enumerate(pods):
        out = check_config(pod, flags, _model_of(pod, shapes), tmp_path / str(i))
        assert out.returncode == 0, f"{overlay}: {out.stderr}"
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        assert summary["ok"] and summary["tensor_parallel_size"] == int(
            flags.get("tensor-parallel-size", 1))


def test_check_config_refuses_what_the_engine_refuses(shapes: dict[str, Path],
                                                      tmp_path: Path) -> None:
    """TP 64 on flash (32 attention heads) cannot split the heads: refused at start-up."""
    resources = rendered("overlays/multinode")
    flags = dict(one(resources, "ConfigMap", "unmask-serve")["data"])
    flags |= {"tensor-parallel-size": "64", "nnodes": "2"}
    out = check_config(serving_pods(resources)[0], flags, str(shapes["flash"]), tmp_path)
    assert out.returncode == 2 and "num_attention_heads=32" in out.stderr, out
