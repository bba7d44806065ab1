"""Shared helpers for the deploy tests: rendered kustomizations and the serving pod templates."""

from __future__ import annotations

import argparse
from functools import cache
from pathlib import Path
from typing import Any

from server.cli import build_parser
from tests.deploy.kustomize import Resource, render

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ["cpu-demo", "gpu", "gpu-tp4", "multinode"]
KUSTOMIZATIONS = sorted(str(p.parent.relative_to(K8S)) for p in K8S.rglob("kustomization.yaml"))


@cache
def rendered(name: str) -> tuple[Resource, ...]:
    return tuple(render(K8S / name))


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
