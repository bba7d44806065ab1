"""`unmask loadtest --soak`: a bounded soak of a loopback server. Normal traffic with random
client disconnects, cancellations (client timeouts) and bad requests mixed in; every outcome is
classed as expected or unexpected. Reports leaked KV usage once idle (from `/metrics`), RSS
growth of the API process and its engine child (`/proc/<pid>/status` VmRSS) and p99 latency
drift between the first and the last minute."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np

MAX_DURATION_S = 3600.0
MAX_REQUESTS = 200_000
WARMUP_S = 60.0


@dataclass
class SoakSpec:
    base_url: str  # ends in /v1; must be loopback
    model: str | None = None
    api_key: str | None = None
    duration_s: float = 600.0
    max_requests: int = 20_000
    concurrency: int = 8
    seed: int = 0
    output_len: int = 32
    sample_every_s: float = 5.0


@dataclass
class SoakState:
    outcomes: Counter[str] = field(default_factory=Counter)  # "expected:<class>" etc.
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (t since start, s)
    unexpected: list[str] = field(default_factory=list)  # first few, for the report
    rss: list[tuple[float, int, int]] = field(default_factory=list)  # (t, api kB, engine kB)
    sent: int = 0


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise SystemExit(f"--soak targets loopback servers only, not {host!r}")


# -- process lookup through /proc -----------------------------------------------------------
def listening_pid(port: int) -> int | None:
    """The pid holding the listening TCP socket on `port` (loopback soak: same machine)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{f[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if str(fd.readlink()) in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


def child_pids(pid: int) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(proc.name))
    return out


def rss_kb(pid: int | None) -> int:
    if pid is None:
        return 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def engine_pid(api_pid: int | None) -> int | None:
    """The engine: the API process's child with the largest RSS (spawn's tracker is tiny)."""
    if api_pid is None:
        return None
    kids = child_pids(api_pid)
    return max(kids, key=rss_kb) if kids else None


# -- traffic ----------------------------------------------------------------------------------
def _is_openai_error(body: bytes) -> bool:
    try:
        e = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(e, dict) and isinstance(e.get("message"), str) and "type" in e


def bad_requests(model: str) -> list[tuple[str, dict[str, Any] | bytes, dict[str, str]]]:
    """(name, body, extra headers): each must get a 4xx with an OpenAI-shaped error."""
    return [
        ("bad_json", b"{not json", {}),
        ("wrong_content_type", b"prompt=hi", {"content-type": "text/plain"}),
        ("negative_max_tokens", {"model": model, "prompt": "x", "max_tokens": -1}, {}),
        ("huge_max_tokens", {"model": model, "prompt": "x", "max_tokens": 10**12}, {}),
        ("huge_n", {"model": model, "prompt": "x", "n": 10**6}, {}),
        ("nan_temperature", b'{"prompt": "x", "temperature": NaN}', {}),
        ("empty_prompt", {"model": model, "prompt": ""}, {}),
        ("unknown_model", {"model": "no-such-model", "prompt": "x"}, {}),
        ("bad_token_id", {"model": model, "prompt": [10**9]}, {}),
        ("unknown_role", {"model": model, "messages": [{"role": "wizard", "content": "x"}]},
         {"path": "chat"}),
        ("empty_messages", {"model": model, "messages": []}, {"path": "chat"}),
        ("lone_surrogate", b'{"prompt": "\\ud800", "max_tokens": 2}', {}),
    ]


class Soak:
    def __init__(self, spec: SoakSpec) -> None:
        check_loopback(spec.base_url)
        self.spec = spec
        self.root = spec.base_url.rstrip("/").removesuffix("/v1")
        self.rng = random.Random(spec.seed)
        self.state = SoakState()
        self.headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
        port = urlparse(spec.base_url).port or 80
        self.api_pid = listening_pid(port)
        self.engine_pid = engine_pid(self.api_pid)

    def _record(self, kind: str, ok: bool, detail: str = "") -> None:
        self.state.outcomes[f"{'expected' if ok else 'unexpected'}:{kind}"] += 1
        if not ok and len(self.state.unexpected) < 20:
            self.state.unexpected.append(f"{kind}: {detail[:300]}")

    async def _normal(self, c: httpx.AsyncClient, t0: float) -> None:
        chat = self.rng.random() < 0.4
        n_words = self.rng.randint(4, 60)
        text = " ".join(self.rng.choice(("alpha", "beta", "gamma", "delta", "omega"))
                        for _ in range(n_words))
        body: dict[str, Any] = {"model": self.model, "stream": True,
                                "max_tokens": self.rng.randint(4, self.spec.output_len),
                                "temperature": self.rng.choice((0.0, 0.7))}
        body |= ({"messages": [{"role": "user", "content": text}]} if chat else {"prompt": text})
        url = self.spec.base_url + ("/chat/completions" if chat else "/completions")
        start = time.perf_counter()
        try:
            async with c.stream("POST", url, json=body, headers=self.headers) as r:
                if r.status_code == 503:  # overload is a documented, expected answer
                    body_b = await r.aread()
                    self._record("overload_503", _is_openai_error(body_b), body_b.decode())
                    return
                if r.status_code != 200:
                    self._record("normal", False, f"HTTP {r.status_code}: "
                                 f"{(await r.aread()).decode(errors='replace')}")
                    return
                done = False
                async for line in r.aiter_lines():
                    if line.startswith("data: [DONE]"):
                        done = True
                    elif line.startswith("data:") and '"error"' in line:
                        self._record("normal", False, line)
                        return
        except (httpx.HTTPError, OSError) as e:
            self._record("normal", False, f"{type(e).__name__}: {e}")
            return
        if not done:
            self._record("normal", False, "stream ended without [DONE]")
            return
        self.state.latencies.append((start - t0, time.perf_counter() - start))
        self._record("normal", True)

    async def _disconnect(self, c: httpx.AsyncClient) -> None:
        body = {"model": self.model, "prompt": "hang up on me", "stream": True,
                "max_tokens": 200, "ignore_eos": True}
        try:
            async with c.stream("POST", self.spec.base_url + "/completions", json=body,
                                headers=self.headers) as r:
                if r.status_code == 503:
                    self._record("overload_503", True)
                    return
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        break  # hang up mid-generation
            self._record("disconnect", True)
        except (httpx.HTTPError, OSError) as e:
            self._record("disconnect", False, f"{type(e).__name__}: {e}")

    async def _cancel(self, c: httpx.AsyncClient) -> None:
        body = {"model": self.model, "prompt": "cancel me", "max_tokens": 200,
                "ignore_eos": True}
        try:
            r = await c.post(self.spec.base_url + "/completions", json=body,
                             headers=self.headers, timeout=self.rng.uniform(0.05, 1.0))
            ok = r.status_code in (200, 503)  # finished before the timeout, or shed
            self._record("cancel", ok, f"HTTP {r.status_code}: {r.text}")
        except httpx.TimeoutException:
            self._record("cancel", True)
        except (httpx.HTTPError, OSError) as e:
            self._record("cancel", False, f"{type(e).__name__}: {e}")

    async def _bad(self, c: httpx.AsyncClient) -> None:
        name, body, extra = self.rng.choice(bad_requests(self.model))
        extra = dict(extra)
        path = "/chat/completions" if extra.pop("path", "") == "chat" else "/completions"
        headers = {**self.headers, "content-type": "application/json", **extra}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            r = await c.post(self.spec.base_url + path, content=content, headers=headers)
        except (httpx.HTTPError, OSError) as e:
            self._record(f"bad:{name}", False, f"{type(e).__name__}: {e}")
            return
        ok = 400 <= r.status_code < 500 and _is_openai_error(r.content)
        self._record(f"bad:{name}", ok, f"HTTP {r.status_code}: {r.text}")

    async def _worker(self, c: httpx.AsyncClient, t0: float, deadline: float) -> None:
        while time.perf_counter() < deadline and self.state.sent < self.spec.max_requests:
            self.state.sent += 1
            x = self.rng.random()
            if x < 0.6:
                await self._normal(c, t0)
            elif x < 0.7:
                await self._disconnect(c)
            elif x < 0.8:
                await self._cancel(c)
            else:
                await self._bad(c)

    async def _sampler(self, t0: float, deadline: float) -> None:
        while time.perf_counter() < deadline:
            self.state.rss.append((time.perf_counter() - t0, rss_kb(self.api_pid),
                                   rss_kb(self.engine_pid)))
            await asyncio.sleep(self.spec.sample_every_s)

    async def _gauges(self, c: httpx.AsyncClient) -> dict[str, float]:
        text = (await c.get(self.root + "/metrics")).text
        want = ("unmask:kv_cache_usage_perc", "unmask:num_requests_running",
                "unmask:num_requests_waiting")
        out = dict.fromkeys(want, 0.0)
        for line in text.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in want:
                out[name] += float(line.rsplit(" ", 1)[1])
        return out

    async def run(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=120) as c:
            self.model = self.spec.model or (
                await c.get(self.spec.base_url + "/models", headers=self.headers)
            ).json()["data"][0]["id"]
            t0 = time.perf_counter()
            deadline = t0 + self.spec.duration_s
            sampler = asyncio.create_task(self._sampler(t0, deadline))
            await asyncio.gather(*(self._worker(c, t0, deadline)
                                   for _ in range(self.spec.concurrency)))
            elapsed = time.perf_counter() - t0
            sampler.cancel()
            idle_deadline = time.perf_counter() + 30
            gauges = await self._gauges(c)
            while any(gauges.values()) and time.perf_counter() < idle_deadline:
                await asyncio.sleep(0.5)
                gauges = await self._gauges(c)
            self.state.rss.append((time.perf_counter() - t0, rss_kb(self.api_pid),
                                   rss_kb(self.engine_pid)))
            fresh = await c.post(self.spec.base_url + "/completions", headers=self.headers,
                                 json={"model": self.model, "prompt": "after the soak",
                                       "max_tokens": 4})
        return self._summary(elapsed, gauges, fresh.status_code)

    def _summary(self, elapsed: float, gauges: dict[str, float], fresh: int) -> dict[str, Any]:
        s = self.state
        lat = s.latencies

        def p99(lo: float, hi: float) -> float | None:
            xs = [v for t, v in lat if lo <= t < hi]
            return float(np.percentile(xs, 99)) * 1000 if xs else None

        first, last = p99(0, 60), p99(elapsed - 60, elapsed + 1)
        warm = [r for r in s.rss if r[0] >= min(WARMUP_S, elapsed / 2)] or s.rss

        def growth(i: int) -> float | None:
            a, b = warm[0][i], warm[-1][i]
            return (b - a) / a * 100 if a else None

        return {
            "elapsed_s": elapsed, "requests": s.sent,
            "outcomes": dict(sorted(s.outcomes.items())),
            "unexpected_errors": sum(v for k, v in s.outcomes.items()
                                     if k.startswith("unexpected")),
            "unexpected_samples": s.unexpected,
            "idle_gauges": gauges,
            "leaked_kv_usage_perc": gauges["unmask:kv_cache_usage_perc"],
            "fresh_request_status": fresh,
            "api_pid": self.api_pid, "engine_pid": self.engine_pid,
            "rss_kb_after_warmup": {"api": warm[0][1], "engine": warm[0][2]} if warm else {},
            "rss_kb_end": {"api": warm[-1][1], "engine": warm[-1][2]} if warm else {},
            "rss_growth_pct_after_warmup": {"api": growth(1), "engine": growth(2)} if warm else {},
            "p99_latency_ms_first_minute": first, "p99_latency_ms_last_minute": last,
            "p99_drift_pct": (last - first) / first * 100 if first and last else None,
            "rss_samples": s.rss,
        }


def text_report(r: dict[str, Any]) -> str:
    lines = [f"soak: {r['requests']} requests in {r['elapsed_s']:.0f}s; "
             f"unexpected errors: {r['unexpected_errors']}"]
    lines += [f"  {k:<40} {v}" for k, v in r["outcomes"].items()]
    lines += [f"  unexpected: {u}" for u in r["unexpected_samples"]]
    lines.append(f"idle gauges: {r['idle_gauges']} (leaked KV usage "
                 f"{r['leaked_kv_usage_perc']}); fresh request after: HTTP "
                 f"{r['fresh_request_status']}")
    lines.append(f"RSS kB after warm-up {r['rss_kb_after_warmup']} → end {r['rss_kb_end']}; "
                 f"growth % {r['rss_growth_pct_after_warmup']} (api pid {r['api_pid']}, "
                 f"engine pid {r['engine_pid']})")
    lines.append(f"p99 latency of normal requests: first minute "
                 f"{r['p99_latency_ms_first_minute']} ms, last minute "
                 f"{r['p99_latency_ms_last_minute']} ms, drift {r['p99_drift_pct']} %")
    return "\n".join(lines)


def run_soak(spec: SoakSpec) -> dict[str, Any]:
    if not 0 < spec.duration_s <= MAX_DURATION_S:
        raise SystemExit(f"--soak-duration must be in (0, {MAX_DURATION_S:.0f}] seconds")
    if not 0 < spec.max_requests <= MAX_REQUESTS:
        raise SystemExit(f"--soak-max-requests must be in (0, {MAX_REQUESTS}]")
    return asyncio.run(Soak(spec).run())
