"""A real `unmask serve` subprocess on a free port, for black-box tests with the openai SDK."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

API_KEY = "test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RemoteServer:
    def __init__(self, model: Path | None, *extra: str, api_key: str | None = API_KEY,
                 name: str | None = "tiny", timeout: float = 120,
                 env: dict[str, str] | None = None, unmask: Path | None = None,
                 cwd: Path | None = None) -> None:
        """`model` None serves the embedded default model; `name` None passes no
        --served-model-name (the server's default name); `unmask` another install's console
        script (default: this interpreter's)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.name = name
        unmask = unmask or Path(sys.executable).parent / "unmask"  # console script: no cwd on path
        cmd = [str(unmask), "serve", *([str(model)] if model else []), "--port", str(self.port),
               *(["--served-model-name", name] if name else []), "--log-level", "warning",
               *extra]
        if api_key:
            cmd += ["--api-key", api_key]
        log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"unmask-{self.port}.log"
        self.log = open(log_path, "w")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env={**os.environ, **(env or {})},
                                     cwd=cwd)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.tail()}")
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready in {timeout}s: {self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-3000:]

    def client(self, **kw: object):  # noqa: ANN201 - openai.OpenAI
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.api_key or "none",
                             max_retries=0, **kw)

    def async_client(self, **kw: object):  # noqa: ANN201 - openai.AsyncOpenAI
        import openai

        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=self.api_key or "none",
                                  max_retries=0, **kw)

    def metric(self, name: str, default: float | None = None) -> float:
        """Sum of a metric's series; `default` if it has none yet (else KeyError)."""
        text = httpx.get(self.url + "/metrics").text
        total = 0.0
        found = False
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
                found = True
        if not found:
            if default is not None:
                return default
            raise KeyError(name)
        return total

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode
