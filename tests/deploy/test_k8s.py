"""deploy/k8s, rendered: schema validation and consistency with `unmask serve` (no cluster)."""

from __future__ import annotations

import copy
import json
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from server.cli import build_parser
from tests.deploy.crd_schemas import SCHEMAS, cel_errors, validator
from tests.deploy.manifests import (
    EPP_IMAGE,
    KUSTOMIZATIONS,
    OVERLAYS,
    Resource,
    one,
    render_warnings,
    rendered,
    serve_options,
    serving_pods,
)

# "gpu" alone as an id would match the `gpu` marker keyword (tests/conftest.py skips those)
IDS = [f"overlays/{o}" for o in OVERLAYS]
# The oldest Kubernetes minor the manifests target; kubernetes-validate >= 1.31 bundles its
# schemas (built-in kinds, and the embedded types the custom-resource schemas reference).
K8S_VERSION = "1.31.0"
# free-form maps in the custom resources we write: any key is valid there
FREE_MAPS = {"labels", "annotations", "matchLabels", "requests", "limits"}


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == "unmask")


def _is_custom(r: Resource) -> bool:
    return (r["apiVersion"], r["kind"]) in SCHEMAS


def _validate(r: Resource) -> list[str]:
    """Schema errors of one rendered resource: Kubernetes' own for built-in kinds (strict:
    unknown fields fail), the upstream CRD's for custom resources (tests/deploy/crd_schemas.py)."""
    if _is_custom(r):
        errs = validator(r, K8S_VERSION).iter_errors(r)
        return [f"{e.message} at {list(e.absolute_path)}" for e in errs] + cel_errors(r)
    try:
        kubernetes_validate.validate(r, K8S_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"neither a Kubernetes {K8S_VERSION} kind nor in crd_schemas.SCHEMAS: {e.message}"]
    except kubernetes_validate.ValidationError as e:
        return [f"{e.message} at {list(e.absolute_path)}"]
    return []


def test_kubernetes_validate_has_the_target_version() -> None:
    latest = tuple(int(x) for x in kubernetes_validate.latest_version().split(".")[:2])
    target = tuple(int(x) for x in K8S_VERSION.split(".")[:2])
    assert latest >= target, (f"kubernetes-validate {kubernetes_validate.__version__} stops at "
                              f"Kubernetes {latest}: pip install 'kubernetes-validate>=1.31'")
    assert kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}},
        K8S_VERSION, strict=True) == "1.31"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_rendered_resource_validates(name: str) -> None:
    resources = rendered(name)
    assert resources
    assert not render_warnings(name), f"kubectl kustomize {name}: {render_warnings(name)}"
    for r in resources:
        errors = _validate(r)
        assert not errors, f"{name}: {r['kind']}/{r['metadata']['name']}: {errors}"


def _object_paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every mapping in `node` that has a fixed set of fields."""
    out = []
    if isinstance(node, dict):
        if not path or path[-1] not in FREE_MAPS:
            out.append(path)
        for k, v in node.items():
            out += _object_paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _object_paths(v, (*path, i))
    return out


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_custom_resource_schemas_catch_typos(name: str) -> None:
    """A misspelt field anywhere we write one (pod templates and KEDA trigger metadata
    included) fails validation, as it would on the API server with strict field validation."""
    for r in rendered(name):
        if not _is_custom(r):
            continue
        for path in _object_paths(r):
            bad = copy.deepcopy(r)
            node = bad
            for k in path:
                node = node[k]
            node["unknwonField"] = "x"
            assert _validate(bad), f"{r['kind']}: a typo at {list(path)} passes"


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
                value.split() if action.nargs == "+" else (action.type or str)(value))
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
        if overlay == "multinode" and ports:  # the group's TCPStore on PORT, nothing else
            assert ports == {"http": int(flags["port"]), "dist": 29500}
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
    if overlay == "multinode":  # one GPU per rank: each pod runs tp / nnodes ranks
        lws = one(resources, "LeaderWorkerSet")
        assert lws["spec"]["leaderWorkerTemplate"]["size"] == int(flags["nnodes"])
        per_node = int(flags["tensor-parallel-size"]) // int(flags["nnodes"])
        for pod in pods:
            c = _container(pod)
            assert c["resources"]["limits"]["nvidia.com/gpu"] == str(per_node)
            assert c["resources"]["requests"]["nvidia.com/gpu"] == str(per_node)


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


# `pkg/epp/server/options.go` (AddFlags) and the logging options it binds
# (pkg/common/observability/logging/options.go: -v and controller-runtime's zap flags) in
# kubernetes-sigs/gateway-api-inference-extension at v1.5.0, less the flags deprecated there.
EPP_FLAGS = {
    "grpc-port", "ha-enable-leader-election", "pool-group", "pool-namespace", "pool-name",
    "endpoint-selector", "endpoint-target-ports", "disable-endpoint-subset-filter",
    "refresh-metrics-interval", "refresh-prometheus-metrics-interval",
    "metrics-staleness-threshold", "v", "zap-devel", "zap-encoder", "zap-log-level",
    "zap-stacktrace-level", "zap-time-encoding", "tracing", "health-checking", "metrics-port",
    "grpc-health-port", "enable-pprof", "cert-path", "enable-cert-reload", "secure-serving",
    "metrics-endpoint-auth", "config-file", "config-text",
}
# refused at start-up by v1.5.0 (Options.Validate): metrics come from EndpointPickerConfig
EPP_REFUSED_FLAGS = {"total-queued-requests-metric", "total-running-requests-metric",
                     "kv-cache-usage-percentage-metric", "lora-info-metric", "cache-info-metric"}


def test_endpoint_picker_flags_exist_in_its_pinned_version() -> None:
    resources = rendered("inference-pool")
    epp = one(resources, "Deployment", "unmask-epp")["spec"]["template"]["spec"]
    c = epp["containers"][0]
    assert c["image"] == EPP_IMAGE, "a new EPP version: re-read its flags and metric defaults"
    assert all(a.startswith("--") and "=" in a for a in c["args"]), c["args"]
    flags = dict(a[2:].split("=", 1) for a in c["args"])
    assert set(flags) <= EPP_FLAGS, f"not flags of {EPP_IMAGE}: {set(flags) - EPP_FLAGS}"
    assert not set(flags) & EPP_REFUSED_FLAGS
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["grpc"] == int(flags["grpc-port"])
    assert c["readinessProbe"]["grpc"]["port"] == int(flags["grpc-health-port"])
    pool = one(resources, "InferencePool")
    env = {e["name"]: e for e in c["env"]}
    # the pool's namespace: --pool-namespace, else the NAMESPACE env var (the pod's own)
    assert "pool-namespace" not in flags
    assert env["NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert flags["pool-name"] == pool["metadata"]["name"]
    svc = one(resources, "Service", pool["spec"]["endpointPickerRef"]["name"])
    assert svc["spec"]["ports"][0]["port"] == pool["spec"]["endpointPickerRef"]["port"]["number"]
    role = one(resources, "Role", "unmask-epp")
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"]}
    assert {("inference.networking.k8s.io", "inferencepools"), ("", "pods")} <= granted
    binding = one(resources, "RoleBinding", "unmask-epp")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "unmask-epp",
                                    "namespace": "unmask"}]
