"""deploy/k8s, rendered: schema validation and consistency with `unmask serve` (no cluster)."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from server.cli import build_parser
from tests.deploy.crd_schemas import SCHEMAS
from tests.deploy.kustomize import is_builtin
from tests.deploy.manifests import (
    KUSTOMIZATIONS,
    OVERLAYS,
    one,
    rendered,
    serve_options,
    serving_pods,
)

# "gpu" alone as an id would match the `gpu` marker keyword (tests/conftest.py skips those)
IDS = [f"overlays/{o}" for o in OVERLAYS]
K8S_VERSION = "1.30.0"  # the oldest minor the manifests target (LWS and sidecars need >= 1.27)


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == "unmask")


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_rendered_resource_validates(name: str) -> None:
    resources = rendered(name)
    assert resources
    for r in resources:
        where = f"{name}: {r['kind']}/{r['metadata']['name']}"
        if is_builtin(r):
            try:
                kubernetes_validate.validate(r, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{where}: {e.message} at {list(e.path)}")
        else:
            assert r["kind"] in SCHEMAS, f"{where}: no schema for this custom resource"
            jsonschema.validate(r, SCHEMAS[r["kind"]])
    for pod in serving_pods(resources):  # LeaderWorkerSet templates: full pod validation
        template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                    "template": pod}
        kubernetes_validate.validate(template, K8S_VERSION, strict=True)


def test_every_kustomization_is_covered() -> None:
    assert {f"overlays/{o}" for o in OVERLAYS} <= set(KUSTOMIZATIONS)
    assert {"base", "autoscaling/keda", "autoscaling/hpa", "inference-pool", "jobs"} <= set(
        KUSTOMIZATIONS)


def _flags(overlay: str) -> dict[str, str]:
    return one(rendered(f"overlays/{overlay}"), "ConfigMap", "unmask-serve")["data"]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_configmap_keys_are_serve_flags(overlay: str) -> None:
    options = serve_options()
    unknown = set(_flags(overlay)) - set(options)
    assert not unknown, f"not `unmask serve` flags: {sorted(unknown)}"
    assert "api-key" not in _flags(overlay), "the API key belongs in a Secret"


def _run_launch_script(pod: dict[str, Any], flags: dict[str, str], tmp: Path) -> list[str]:
    """Run the container's shell command with a stub `unmask` that records its argv."""
    c = _container(pod)
    assert c["command"][:2] == ["/bin/sh", "-c"]
    flag_dir = tmp / "flags"
    flag_dir.mkdir(parents=True)
    (flag_dir / "..data").mkdir()  # what a ConfigMap volume also holds; the glob skips it
    for k, v in flags.items():
        (flag_dir / k).write_text(v)
    stub = tmp / "bin" / "unmask"
    stub.parent.mkdir()
    stub.write_text(f"#!{sys.executable}\n"
                    "import json, sys; print(json.dumps(sys.argv[1:]))\n")
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    env = {e["name"]: e.get("value", "") for e in c.get("env", [])}
    env |= {"LWS_WORKER_INDEX": "1", "LWS_LEADER_ADDRESS": "unmask-0.unmask"}
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in c.get("args", [])]
    script = c["command"][2].replace("/etc/unmask/serve", str(flag_dir))
    out = subprocess.run(["/bin/sh", "-c", script, *c["command"][3:], *args],
                         env={"PATH": f"{stub.parent}:/usr/bin:/bin",
                              **{k: v for k, v in env.items() if k.startswith("UNMASK")}},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_container_command_becomes_the_configmap_flags(overlay: str, tmp_path: Path) -> None:
    base_script = _container(serving_pods(rendered("base"))[0])["command"]
    flags = _flags(overlay)
    for i, pod in enumerate(serving_pods(rendered(f"overlays/{overlay}"))):
        assert _container(pod)["command"] == base_script, "one launch script everywhere"
        argv = _run_launch_script(pod, flags, tmp_path / str(i))
        assert argv[0] == "serve"
        model = {e["name"]: e.get("value") for e in _container(pod)["env"]}["UNMASK_MODEL"]
        args = build_parser().parse_args(argv)
        for key, value in flags.items():
            action = serve_options()[key]
            expect = (True if value == "true" else None) if action.nargs == 0 else (
                action.type or str)(value)
            assert getattr(args, action.dest) == expect, key
        assert args.model == (model or None)
        if overlay == "multinode":  # the pod's place in the group, from the LWS controller
            assert (args.node_rank, args.dist_init_addr) == (1, "unmask-0.unmask:29500")
            assert int(flags["tensor-parallel-size"]) % int(flags["nnodes"]) == 0


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_probes_ports_drain_and_security(overlay: str) -> None:
    resources = rendered(f"overlays/{overlay}")
    flags = _flags(overlay)
    pods = serving_pods(resources)
    assert pods
    for pod in pods:
        spec, c = pod["spec"], _container(pod)
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        if pod["metadata"]["labels"]["app.kubernetes.io/component"] == "worker":
            # node k > 0 serves no HTTP and listens on nothing: its ranks dial the leader, and
            # exit (restarting the group) when rank 0 goes away, so it has no probes either
            assert not ports and not any(k.endswith("Probe") for k in c)
        else:
            assert ports["http"] == int(flags["port"])
        if overlay == "multinode" and ports:  # the store on PORT, rank 0's control on PORT+1
            assert (ports["dist"], ports["control"]) == (29500, 29501)
        if pod["metadata"]["labels"]["app.kubernetes.io/component"] == "server":
            probes = {k: c[k]["httpGet"] for k in ("startupProbe", "livenessProbe",
                                                   "readinessProbe")}
            assert {k: (p["path"], p["port"]) for k, p in probes.items()} == {
                "startupProbe": ("/health", "http"), "livenessProbe": ("/health", "http"),
                "readinessProbe": ("/ready", "http")}
            startup = c["startupProbe"]
            budget = startup["periodSeconds"] * startup["failureThreshold"]
            assert budget >= (300 if overlay == "cpu-demo" else 1800), "time to load the model"
        assert spec["terminationGracePeriodSeconds"] >= float(flags["shutdown-timeout"]) + 10
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        sc = c["securityContext"]
        assert sc["capabilities"]["drop"] == ["ALL"] and sc["allowPrivilegeEscalation"] is False
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        assert "emptyDir" in volumes[mounts["/home/unmask"]], "a writable HOME under any UID"
        gpus = c["resources"]["limits"].get("nvidia.com/gpu")
        assert (gpus is None) == (overlay == "cpu-demo")
        if overlay != "cpu-demo":
            assert "persistentVolumeClaim" in volumes[mounts["/models"]]
    if overlay in ("gpu", "gpu-tp4"):
        env = {e["name"]: e for e in _container(pods[0])["env"]}
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "unmask-hf-token"
    if overlay == "gpu-tp4":
        gpus = _container(pods[0])["resources"]["limits"]["nvidia.com/gpu"]
        assert gpus == flags["tensor-parallel-size"] == "4"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_selectors_and_ports_reach_the_server_pods(overlay: str) -> None:
    resources = rendered(f"overlays/{overlay}")
    server = next(p for p in serving_pods(resources)
                  if p["metadata"]["labels"]["app.kubernetes.io/component"] == "server")
    labels = server["metadata"]["labels"]
    svc = one(resources, "Service", "unmask")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        r = one(resources, kind)
        sel = r["spec"]["selector" if kind == "PodDisruptionBudget" else "podSelector"]
        assert sel["matchLabels"].items() <= labels.items(), kind
    mon = one(resources, "ServiceMonitor")
    assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert mon["spec"]["endpoints"][0] == {"port": "http", "path": "/metrics", "interval": "15s"}
    pool = one(rendered("inference-pool"), "InferencePool")
    assert pool["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pool["spec"]["targetPorts"] == [{"number": int(_flags(overlay)["port"])}]


def test_autoscalers_target_the_deployment() -> None:
    so = one(rendered("autoscaling/keda"), "ScaledObject")
    hpa = one(rendered("autoscaling/hpa"), "HorizontalPodAutoscaler")
    dep = one(rendered("overlays/gpu"), "Deployment")
    for ref in (so["spec"]["scaleTargetRef"], hpa["spec"]["scaleTargetRef"]):
        assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
    ns = {r["metadata"]["namespace"] for r in (so, hpa, dep)}
    assert ns == {"unmask"}
    assert 'namespace="unmask"' in so["spec"]["triggers"][0]["metadata"]["query"]
