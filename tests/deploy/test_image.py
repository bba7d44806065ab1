"""The container images, built and run for real (deploy/docker/): the CPU image serves the
shipped model with no model argument (through the openai SDK) under an arbitrary UID with a
read-only root, exports the usual unmask: metrics, and `docker stop` drains an in-flight stream:
it completes normally and the container exits 0 within the grace period. The GPU image builds on
this CPU machine (a local Debian base and the CPU torch wheel in place of the CUDA base and
PyPI's CUDA torch) and imports the package; CUDA itself is not exercised.

Needs a container engine: the running Docker daemon or a dockerd started here (root), and a
docker client with BuildKit; skipped with the reason otherwise (tests/deploy/containers.py).
No registry is reached: the base image is made with mmdebstrap when missing. Builds use the host
network (PyPI, the Debian mirror); containers run on it and are reached on 127.0.0.1 only. The
images and the base stay in the daemon for the next run (the build cache makes it fast)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.deploy.containers import (
    Docker,
    build_context,
    docker_engine,
    ensure_base_image,
    local_torch_wheel,
    torch_build_args,
)
from tests.e2e.server_harness import free_port

pytestmark = pytest.mark.slow

CPU_IMAGE = "localhost/unmask-cpu:test"
GPU_IMAGE = "localhost/unmask-gpu:test"
SHUTDOWN_TIMEOUT = 30
GRACE = SHUTDOWN_TIMEOUT + 10  # docker stop -t, as terminationGracePeriodSeconds in deploy/k8s
# the Kubernetes securityContext of deploy/k8s: any UID in group 0, read-only root, emptyDirs
# for HOME and /tmp
RUN_AS = ["--user", "4242:0", "--read-only", "--tmpfs", "/tmp", "--tmpfs", "/home/unmask"]
USUAL_METRICS = [
    "unmask:num_requests_running", "unmask:num_requests_waiting", "unmask:kv_cache_usage_perc",
    "unmask:prompt_tokens_total", "unmask:generation_tokens_total",
    "unmask:request_success_total", "unmask:time_to_first_token_seconds_bucket",
    "unmask:inter_token_latency_seconds_bucket", "unmask:tokens_per_forward_bucket",
    "unmask:steps_per_block_bucket",
]


@dataclass
class Context:
    path: Path
    build_args: dict[str, str]


@dataclass
class Served:
    name: str
    url: str
    model: str = ""

    def client(self, **kw: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, **kw)

    def logs(self, engine: Docker) -> str:
        out = engine("logs", self.name, check=False)
        return (out.stdout + out.stderr)[-3000:]

    def metrics(self) -> dict[str, float]:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if m := re.match(r"(unmask:[a-z0-9_:]+)(\{[^}]*\})? (\S+)$", line):
                samples[m[1]] = samples.get(m[1], 0.0) + float(m[3])
        return samples


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Docker]:
    with docker_engine(tmp_path_factory.mktemp("docker")) as docker:
        yield docker


@pytest.fixture(scope="module")
def context(engine: Docker, tmp_path_factory: pytest.TempPathFactory) -> Context:
    """A build context from the checkout with the local torch wheel in deploy/docker/wheels/, and
    the offline build arguments: the local base, torch from that wheel."""
    tmp = tmp_path_factory.mktemp("image")
    base = ensure_base_image(engine, tmp)
    wheel = local_torch_wheel(engine, base)
    return Context(build_context(tmp, wheel), {"BASE_IMAGE": base, **torch_build_args(wheel)})


@pytest.fixture(scope="module")
def cpu_image(engine: Docker, context: Context) -> str:
    engine.build("deploy/docker/Dockerfile.cpu", CPU_IMAGE, context.path,
                 context.path.parent / "build-cpu.log", context.build_args)
    return CPU_IMAGE


@pytest.fixture(scope="module")
def served(engine: Docker, cpu_image: str) -> Iterator[Served]:
    """The CPU image with no model argument, on the host network on a free 127.0.0.1 port."""
    port = free_port()
    srv = Served(f"unmask-image-test-{port}", f"http://127.0.0.1:{port}")
    engine("run", "-d", "--name", srv.name, "--network", "host", *RUN_AS, cpu_image,
           "--host", "127.0.0.1", "--port", str(port),
           "--shutdown-timeout", str(SHUTDOWN_TIMEOUT))
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(srv.url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            running = engine("inspect", "-f", "{{.State.Running}}", srv.name).stdout.strip()
            if running != "true" or time.monotonic() > deadline:
                pytest.fail(f"container not ready (running: {running}):\n{srv.logs(engine)}")
            time.sleep(0.5)
        yield srv
    finally:
        engine("rm", "-f", srv.name, check=False)


def test_cpu_image_runs_unmask_serve_as_non_root(engine: Docker, cpu_image: str) -> None:
    cfg = engine("image", "inspect", "-f", "{{json .Config}}", cpu_image).stdout
    assert '"User":"1000:0"' in cfg and '"Entrypoint":["unmask","serve"]' in cfg, cfg
    assert '"HOME=/home/unmask"' in cfg, cfg


def test_cpu_image_serves_the_shipped_model(served: Served) -> None:
    (card,) = served.client().models.list().data
    # the package's own copy in the image's virtualenv: installed, not a mounted checkout
    assert card.root.startswith("/opt/unmask/lib/"), card.root
    assert card.root.endswith("/site-packages/server/checkpoints/llada2"), card.root
    out = served.client(timeout=120).chat.completions.create(
        model=card.id, max_tokens=48, temperature=0,
        messages=[{"role": "user", "content": "Write a Python function `is_palindrome(s)` "
                   "that checks whether the string s is a palindrome."}])
    assert "def is_palindrome" in (out.choices[0].message.content or ""), out


def test_cpu_image_exports_the_usual_metrics(served: Served) -> None:
    samples = served.metrics()
    missing = [m for m in USUAL_METRICS if m not in samples]
    assert not missing, (missing, sorted(samples))
    assert samples["unmask:num_requests_running"] == 0


def test_docker_stop_drains_the_in_flight_stream(engine: Docker, served: Served) -> None:
    """Last against the container: it stops it. One token per forward (threshold 1.0) and 1500 of
    them keep the stream going for seconds after SIGTERM."""
    max_tokens = 1500
    model = served.client().models.list().data[0].id
    stream = served.client(timeout=120).chat.completions.create(
        model=model, max_tokens=max_tokens, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Tell me a very long story."}],
        extra_body={"ignore_eos": True, "threshold": 1.0})
    chunks = iter(stream)
    next(chunks)
    deadline = time.monotonic() + 10
    while served.metrics()["unmask:num_requests_running"] != 1:
        assert time.monotonic() < deadline, "the stream never ran"
        time.sleep(0.05)

    stopped: dict[str, float] = {}

    def stop() -> None:
        t0 = time.monotonic()
        engine("stop", "-t", str(GRACE), served.name, timeout=GRACE + 60)
        stopped["after"] = time.monotonic() - t0

    stopper = threading.Thread(target=stop)
    stopper.start()
    deadline = time.monotonic() + 10
    while httpx.get(served.url + "/ready", timeout=5).status_code != 503:
        assert time.monotonic() < deadline, "SIGTERM did not turn /ready to 503"
        time.sleep(0.05)
    # draining: the stream is still running, a new request is refused
    assert served.metrics()["unmask:num_requests_running"] == 1
    with pytest.raises(openai.InternalServerError):
        served.client().chat.completions.create(
            model=model, max_tokens=4, messages=[{"role": "user", "content": "late"}])
    rest = list(chunks)  # raises if the stream is cut off
    finish = [c.choices[0].finish_reason for c in rest if c.choices and
              c.choices[0].finish_reason]
    usage = [c.usage for c in rest if c.usage]
    assert finish == ["length"] and usage[-1].completion_tokens == max_tokens, (finish, usage)

    stopper.join(GRACE + 90)
    assert not stopper.is_alive() and stopped["after"] < GRACE, stopped
    state = engine("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}} {{.State.OOMKilled}}",
                   served.name).stdout.split()
    logs = served.logs(engine)
    assert state == ["exited", "0", "false"], (state, logs)
    assert "draining" in logs, logs


def test_gpu_image_builds_and_imports_without_cuda(engine: Docker, context: Context) -> None:
    """The whole GPU Dockerfile (its Python stage and the runtime stage) from the local Debian
    base with the CPU torch wheel; the import as the image's user. The nvidia/cuda base, PyPI's
    CUDA torch and serving on a GPU need a GPU machine with registry access."""
    engine.build("deploy/docker/Dockerfile", GPU_IMAGE, context.path,
                 context.path.parent / "build-gpu.log", context.build_args)
    cfg = engine("image", "inspect", "-f", "{{json .Config}}", GPU_IMAGE).stdout
    assert '"User":"1000:0"' in cfg and '"Entrypoint":["unmask","serve"]' in cfg, cfg
    out = engine("run", "--rm", "--network", "none", "--entrypoint", "python3", GPU_IMAGE, "-c",
                 "import server, unmask_kernels, server.engine.engine, torch; "
                 "print(server.__file__, torch.__version__)", timeout=120).stdout
    assert out.startswith("/opt/unmask/lib/"), out
