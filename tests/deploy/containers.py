"""A container engine for tests/deploy/test_image.py: a Docker client that builds with BuildKit,
the daemon (the running one, or a dockerd started here on the host network only and stopped by
its PID), a Debian base image made locally with mmdebstrap (no registry is reachable on the CI
machines), the local CPU torch wheel, and a build context holding it. Everything that cannot be
had is a pytest skip with the reason."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/debian-base:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# the machine's CA certificates go into the base: pip in a build reaches PyPI over HTTPS
MMDEBSTRAP = ["mmdebstrap", "--quiet", "--variant=minbase",
              "--include=python3,python3-venv,ca-certificates",
              "--customize-hook=cp /usr/local/share/ca-certificates/*.crt "
              '"$1/usr/local/share/ca-certificates/" 2>/dev/null; '
              'chroot "$1" update-ca-certificates',
              "bookworm", "-", DEBIAN_MIRROR]
DOCKERD = ["--bridge=none", "--iptables=false", "--ip-forward=false"]  # host network only
WHEELS = "deploy/docker/wheels"  # where the Dockerfiles' TORCH_SOURCE=wheels stage looks
LEFT_OUT = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def _run(cmd: list[str], timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


class Docker:
    def __init__(self, exe: str) -> None:
        self.exe = exe
        # Docker 20.10 (Debian's docker.io) has BuildKit built in but off by default
        self.env = {**os.environ, "DOCKER_BUILDKIT": "1"}

    def __call__(self, *args: str, timeout: float = 120,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        out = _run([self.exe, *args], timeout=timeout, env=self.env)
        if check and out.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: rc {out.returncode}\n"
                                 f"{out.stdout[-3000:]}{out.stderr[-3000:]}")
        return out

    def ok(self, *args: str, timeout: float = 30) -> bool:
        try:
            return self(*args, timeout=timeout, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def build(self, dockerfile: str, tag: str, context: Path, log: Path,
              build_args: dict[str, str], *extra: str) -> list[str]:
        """`docker build` on the host network (PyPI and the Debian mirror during the build);
        returns the command line. The output goes to `log`, its tail into a failure. The image
        the tag named before is removed (no dangling image per run)."""
        before = self.image_id(tag)
        cmd = [self.exe, "build", "--network", "host", "--progress", "plain", "-f",
               str(context / dockerfile), *[a for k, v in build_args.items()
                                            for a in ("--build-arg", f"{k}={v}")],
               *extra, "-t", tag, str(context)]
        with open(log, "w") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env,
                                timeout=1500).returncode
        if rc != 0:
            pytest.fail(f"{' '.join(cmd)}: rc {rc}\n{log.read_text()[-5000:]}")
        if before and before != self.image_id(tag):
            self("image", "rm", before, check=False)  # fails harmlessly while still in use
        return cmd

    def image_id(self, tag: str) -> str | None:
        out = self("image", "inspect", "-f", "{{.Id}}", tag, check=False)
        return out.stdout.strip() if out.returncode == 0 else None


def _buildkit_client() -> str | None:
    """The first docker client that builds with BuildKit: one with the buildx plugin, or one older
    than 23 (BuildKit built in). A newer client without buildx would fall back to the legacy
    builder, which has no RUN --mount and builds every stage."""
    seen: set[str] = set()
    for exe in (shutil.which("docker"), "/usr/bin/docker"):
        if not exe or not os.access(exe, os.X_OK) or os.path.realpath(exe) in seen:
            continue
        seen.add(os.path.realpath(exe))
        try:
            version = _run([exe, "version", "--format", "{{.Client.Version}}"]).stdout.strip()
            buildx = _run([exe, "buildx", "version"]).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            continue
        major = version.split(".")[0]
        if buildx or (major.isdigit() and int(major) < 23):
            return exe
    return None


@contextmanager
def docker_engine(tmp: Path) -> Iterator[Docker]:
    """The running daemon, else a dockerd started here (root only) and stopped by its PID at the
    end. Skips when there is no client with BuildKit or no daemon can be had."""
    host = os.environ.get("DOCKER_HOST", "")
    if host and not host.startswith("unix://"):
        pytest.skip(f"DOCKER_HOST={host}: the image tests run a local daemon only")
    exe = _buildkit_client()
    if exe is None:
        pytest.skip("no container engine: no docker client with BuildKit "
                    "(apt-get install docker.io, as .ci/run does)")
    docker = Docker(exe)
    if docker.ok("info"):
        yield docker
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        pytest.skip("no container engine: no Docker daemon running and "
                    + ("no dockerd installed" if dockerd is None else "not root to start dockerd"))
    log = tmp / "dockerd.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([dockerd, *DOCKERD], stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not docker.ok("info", timeout=10):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"no container engine: dockerd did not start:\n"
                            f"{log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield docker
    finally:
        _stop_dockerd(proc)


def _stop_dockerd(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to our dockerd (it stops its own containerd); SIGKILL after 60 s, then its
    containerd too, by the PID it wrote."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
        return
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    pid_file = Path("/var/run/docker/containerd/containerd.pid")
    if pid_file.is_file():
        with suppress(ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)


def ensure_base_image(docker: Docker, tmp: Path) -> str:
    """BASE_IMAGE if the daemon has it, else a Debian bookworm rootfs from mmdebstrap, imported
    under that tag (about 30 s, 220 MB; kept for the next run)."""
    if docker.ok("image", "inspect", BASE_IMAGE):
        return BASE_IMAGE
    if shutil.which("mmdebstrap") is None or os.geteuid() != 0:
        pytest.skip(f"base image {BASE_IMAGE} missing and mmdebstrap (as root) not available to "
                    "make it (apt-get install mmdebstrap, as .ci/run does)")
    log = tmp / "mmdebstrap.log"
    with open(log, "w") as f:
        strap = subprocess.Popen(MMDEBSTRAP, stdout=subprocess.PIPE, stderr=f)
        imp = subprocess.Popen([docker.exe, "import", "--change", 'CMD ["/bin/bash"]', "-",
                                BASE_IMAGE], stdin=strap.stdout, stdout=f, stderr=f)
        strap.stdout.close()  # type: ignore[union-attr]  # import alone reads the pipe
        try:
            rcs = imp.wait(900), strap.wait(60)
        finally:
            for p in (strap, imp):
                if p.poll() is None:
                    p.kill()
                    p.wait()
    if rcs != (0, 0):
        docker("image", "rm", "-f", BASE_IMAGE, check=False)
        pytest.fail(f"making {BASE_IMAGE}: docker import and mmdebstrap rc {rcs}\n"
                    f"{log.read_text()[-3000:]}")
    return BASE_IMAGE


def _wheel_dirs() -> list[Path]:
    """Where pip on this machine finds local wheels (its find-links), and /opt/wheels."""
    links = os.environ.get("PIP_FIND_LINKS", "").split()
    conf = _run([sys.executable, "-m", "pip", "config", "list"]).stdout
    for line in conf.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            links += value.strip("'\"").split()
    dirs = [Path(x.removeprefix("file://")) for x in [*links, "/opt/wheels"]]
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def local_torch_wheel(docker: Docker, base: str) -> Path | None:
    """A torch wheel on local disk for the base image's Python and this machine's architecture
    (on the CI machines: the CPU build in /opt/wheels), or None."""
    tag = docker("run", "--rm", "--network", "none", "--entrypoint", "python3", base, "-c",
                 "import sys; print('cp%d%d' % sys.version_info[:2])").stdout.strip()
    arch = platform.machine()
    found = sorted(w for d in _wheel_dirs() for w in d.glob(f"torch-*-{tag}-{tag}-*{arch}.whl"))
    return found[-1] if found else None


def build_context(tmp: Path, wheel: Path | None) -> Path:
    """What the Dockerfiles take from the repository root (the sources their COPY lines name,
    the Dockerfiles, .dockerignore) copied into a fresh directory, with `wheel` in
    deploy/docker/wheels/: the checkout is not touched."""
    ctx = tmp / "context"
    ctx.mkdir()
    copied = {".dockerignore", "deploy/docker"}
    for dockerfile in (ROOT / "deploy/docker").glob("Dockerfile*"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY ") and "--from" not in line:
                copied.update(line.split()[1:-1])
    for src in sorted(copied):
        if (ROOT / src).is_dir():
            shutil.copytree(ROOT / src, ctx / src, ignore=LEFT_OUT)
        else:
            (ctx / src).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / src, ctx / src)
    shutil.rmtree(ctx / WHEELS, ignore_errors=True)
    (ctx / WHEELS).mkdir(parents=True)
    if wheel is not None:
        try:
            os.link(wheel, ctx / WHEELS / wheel.name)  # 190 MB: no copy where one file system
        except OSError:
            shutil.copy2(wheel, ctx / WHEELS / wheel.name)
    return ctx


def torch_build_args(wheel: Path | None) -> dict[str, str]:
    """TORCH_SOURCE=wheels with the wheel's exact version, or the public default (the index)."""
    if wheel is None:
        return {}
    return {"TORCH_SOURCE": "wheels", "TORCH_VERSION": wheel.name.split("-")[1]}
