"""The cpu-demo container command, run for real: the launch script of the rendered Deployment,
fed the cpu-demo ConfigMap (port swapped for a free one), starts `unmask serve` on the embedded
model; its probe paths answer, every metric the autoscalers, the EPP and the Grafana dashboard
read (`unmask:` or `vllm:` names) is in its /metrics, and SIGTERM drains within
terminationGracePeriodSeconds."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from server.api.metrics import VLLM_NAMES
from tests.deploy.manifests import (
    DEPLOY,
    EPP_ABSENT_METRICS,
    EPP_IMAGE,
    EPP_SCRAPED_METRICS,
    K8S,
    one,
    rendered,
    serving_pods,
)
from tests.e2e.server_harness import free_port

METRIC = re.compile(r"\b(?:unmask|vllm):[a-z0-9_:]+")
SUFFIXES = ("_total", "_created", "_bucket", "_sum", "_count")


def referenced_metrics() -> dict[str, set[str]]:
    so = one(rendered("autoscaling/keda"), "ScaledObject")
    adapter = yaml.safe_load((K8S / "autoscaling/hpa/prometheus-adapter-values.yaml").read_text())
    hpa = one(rendered("autoscaling/hpa"), "HorizontalPodAutoscaler")
    epp = one(rendered("inference-pool"), "Deployment", "unmask-epp")
    dash = json.loads((DEPLOY / "compose/grafana/dashboards/unmask.json").read_text())
    # the adapter renames P:X to P_X: the HPA's metric must come from one of its rules
    rules = adapter["rules"]["custom"]
    adapter_names = {re.sub(r["name"]["matches"], r["name"]["as"].replace("${1}", r"\1"), m)
                     for r in rules for m in METRIC.findall(r["seriesQuery"])}
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] in adapter_names
    container = epp["spec"]["template"]["spec"]["containers"][0]
    # the EPP is given no metric names: it reads its version's defaults (manifests.py)
    assert container["image"] == EPP_IMAGE
    assert not [m for a in container["args"] for m in METRIC.findall(a)]
    return {
        "keda": set(METRIC.findall(so["spec"]["triggers"][0]["metadata"]["query"])),
        "adapter": {m for r in rules for m in METRIC.findall(r["seriesQuery"])},
        "epp": set(EPP_SCRAPED_METRICS),
        "grafana": {m for p in dash["panels"] for t in p["targets"]
                    for m in METRIC.findall(t["expr"])}
                   | set(METRIC.findall(json.dumps(dash["templating"]))),
    }


def _base(name: str, bases: set[str]) -> str:
    """`prefix:base` less a sample suffix (_total, _bucket...) when that leaves one of `bases`."""
    rest = name.partition(":")[2]
    for suffix in SUFFIXES:
        if rest.endswith(suffix) and rest[:-len(suffix)] in bases:
            return rest[:-len(suffix)]
    return rest


def test_referenced_metrics_use_the_vllm_name_where_there_is_one() -> None:
    """One naming rule for everything deploy/ reads: the vLLM name of a metric that has one
    (what the EPP and vLLM's own examples read), the unmask: name of the diffusion-only ones."""
    twins = set(VLLM_NAMES)
    vllm_names = {v for names in VLLM_NAMES.values() for v in names}
    for source, names in referenced_metrics().items():
        for name in names:
            if name.startswith("unmask:"):
                assert _base(name, twins) not in twins, f"{source}: {name} has a vllm: name"
            else:
                assert _base(name, vllm_names) in vllm_names, f"{source}: {name} not a twin"


@pytest.fixture(scope="module")
def cpu_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen]]:
    resources = rendered("overlays/cpu-demo")
    flags = dict(one(resources, "ConfigMap", "unmask-serve")["data"])
    port = free_port()
    flags |= {"host": "127.0.0.1", "port": str(port), "log-level": "warning"}
    tmp = tmp_path_factory.mktemp("cpu-demo")
    (tmp / "flags").mkdir()
    for k, v in flags.items():
        (tmp / "flags" / k).write_text(v)
    c = serving_pods(resources)[0]["spec"]["containers"][0]
    script = c["command"][2].replace("/etc/unmask/serve", str(tmp / "flags"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "UNMASK_MODEL": ""}
    log = open(tmp / "server.log", "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(["/bin/sh", "-c", script, *c["command"][3:]], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("cpu-demo server not ready: " + (tmp / "server.log").read_text()[-3000:])
    yield url, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_probe_paths_answer(cpu_demo: tuple[str, subprocess.Popen]) -> None:
    url, _ = cpu_demo
    c = serving_pods(rendered("overlays/cpu-demo"))[0]["spec"]["containers"][0]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert httpx.get(url + c[probe]["httpGet"]["path"]).status_code == 200, probe
    mon = one(rendered("overlays/cpu-demo"), "ServiceMonitor")
    assert httpx.get(url + mon["spec"]["endpoints"][0]["path"]).status_code == 200


def test_every_referenced_metric_is_exported(cpu_demo: tuple[str, subprocess.Popen]) -> None:
    url, _ = cpu_demo
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=80,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    # streamed over several diffusion blocks: TTFT, ITL and steps-per-block get samples
    assert [ch.usage.completion_tokens for ch in chat if ch.usage] == [80]
    families = list(text_string_to_metric_families(httpx.get(url + "/metrics").text))
    exported: set[str] = set()
    with_samples = {s.name for f in families for s in f.samples}
    for f in families:
        suffixes = {"counter": ["_total", "_created"], "gauge": [""],
                    "histogram": ["_bucket", "_sum", "_count", "_created"]}[f.type]
        exported |= {f.name + s for s in suffixes}
    refs = referenced_metrics()
    assert refs["keda"] == {"vllm:num_requests_waiting"}
    assert refs["epp"] == {"vllm:num_requests_waiting", "vllm:num_requests_running",
                           "vllm:kv_cache_usage_perc"}
    for source, names in refs.items():
        assert names, source
        assert names <= exported, f"{source}: not exported: {names - exported}"
    # documented as missing in epp.yaml and deploy/README.md (the EPP logs it and goes on)
    assert not EPP_ABSENT_METRICS & exported, "now exported: update epp.yaml and the README"
    gauges_and_histograms = {n for names in refs.values() for n in names
                             if not n.endswith(("_total", "_created"))}
    assert gauges_and_histograms <= with_samples, gauges_and_histograms - with_samples
    for panel in ("Tokens per forward", "Steps per diffusion block", "Time to first token",
                  "Inter-token latency", "Requests running / waiting", "KV cache usage",
                  "Preemptions per second", "Output tokens per second"):
        assert panel in {p["title"] for p in json.loads(
            (DEPLOY / "compose/grafana/dashboards/unmask.json").read_text())["panels"]}


def test_sigterm_drains_within_the_grace_period(cpu_demo: tuple[str, subprocess.Popen]) -> None:
    url, proc = cpu_demo
    grace = serving_pods(rendered("overlays/cpu-demo"))[0]["spec"]["terminationGracePeriodSeconds"]
    start = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)  # the shell exec'd unmask: the pod's PID 1
    assert proc.wait(timeout=grace) == 0
    assert time.monotonic() - start < grace
