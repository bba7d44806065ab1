"""Shared helpers for the deploy tests: kustomizations rendered by `kubectl kustomize`, the
serving pod templates, and what the pinned Endpoint Picker reads."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.cli import build_parser

Resource = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ["cpu-demo", "gpu", "gpu-tp4", "multinode"]
KUSTOMIZATIONS = sorted(str(p.parent.relative_to(K8S)) for p in K8S.rglob("kustomization.yaml"))

# The Endpoint Picker of deploy/k8s/inference-pool/epp.yaml, and the model-server gauges that
# version scrapes when given no metric flags: the vLLM engine config of its core metrics
# extractor (kubernetes-sigs/gateway-api-inference-extension, tag v1.5.0:
# pkg/epp/server/options.go NewOptions and
# pkg/epp/framework/plugins/datalayer/extractor/metrics/factories.go defaultEngineConfigs).
EPP_IMAGE = "registry.k8s.io/gateway-api-inference-extension/epp:v1.5.0"
EPP_SCRAPED_METRICS = {"vllm:num_requests_waiting", "vllm:num_requests_running",
                       "vllm:kv_cache_usage_perc"}
# also read by default; unmask exports neither (no LoRA; the EPP's prefix scorer then keeps its
# configured block size), so the EPP logs one extraction error per pod and routes on the three
EPP_ABSENT_METRICS = {"vllm:lora_requests_info", "vllm:cache_config_info"}


def kubectl() -> str:
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.skip("kubectl not on PATH: the manifests are rendered with `kubectl kustomize` "
                    "(kubectl >= 1.27 bundles kustomize v5)")
    return exe


@cache
def _render(name: str) -> tuple[tuple[Resource, ...], str]:
    out = subprocess.run([kubectl(), "kustomize", str(K8S / name)], capture_output=True,
                         text=True, timeout=120)
    if out.returncode:
        raise AssertionError(f"kubectl kustomize {name} failed:\n{out.stderr}")
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d is not None), out.stderr


def rendered(name: str) -> tuple[Resource, ...]:
    """`kubectl kustomize deploy/k8s/<name>`, as dicts (cached: treat them as read-only)."""
    return _render(name)[0]


def render_warnings(name: str) -> str:
    """What `kubectl kustomize` printed on stderr (deprecations, e.g.)."""
    return _render(name)[1]


def one(resources: tuple[Resource, ...], kind: str, name: str | None = None) -> Resource:
    found = [r for r in resources if r["kind"] == kind
             and (name is None or r["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def serving_pods(resources: tuple[Resource, ...]) -> list[dict[str, Any]]:
    """The pod templates running `unmask serve`: the Deployment's, or a LeaderWorkerSet's."""
    pods = []
    for r in resources:
        if r["kind"] == "Deployment" and r["metadata"]["name"] == "unmask":
            pods.append(r["spec"]["template"])
        elif r["kind"] == "LeaderWorkerSet":
            t = r["spec"]["leaderWorkerTemplate"]
            pods += [t["leaderTemplate"], t["workerTemplate"]]
    return pods


def serve_options() -> dict[str, argparse.Action]:
    """Long option name without `--` -> its argparse action, for `unmask serve`."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    serve = sub.choices["serve"]
    return {s[2:]: a for a in serve._actions for s in a.option_strings if s.startswith("--")}
