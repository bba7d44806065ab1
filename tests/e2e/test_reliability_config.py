"""Security defaults and configurable limits, and a short `loadtest --soak` run."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from loadtest.soak import SoakSpec, check_loopback, run_soak
from tests.e2e.server_harness import API_KEY, RemoteServer

H = {"Authorization": f"Bearer {API_KEY}"}
SECRET = "zebra-quartz-7731"  # a prompt that must not reach the log unless asked


def _cors(srv: RemoteServer, origin: str) -> str | None:
    r = httpx.options(srv.url + "/v1/completions", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST"})
    return r.headers.get("access-control-allow-origin")


def test_defaults_and_a_short_soak(tiny_llada2: Path) -> None:
    srv = RemoteServer(tiny_llada2, "--log-level", "info")
    try:
        r = httpx.post(srv.url + "/v1/completions", headers=H, timeout=60,
                       json={"prompt": SECRET, "max_tokens": 4})
        assert r.status_code == 200
        assert _cors(srv, "http://evil.example") is None  # CORS off by default
        result = run_soak(SoakSpec(srv.url + "/v1", api_key=API_KEY, duration_s=8,
                                   concurrency=4, output_len=8))
        assert result["unexpected_errors"] == 0, result["unexpected_samples"]
        assert result["outcomes"].get("expected:normal", 0) > 0
        assert result["leaked_kv_usage_perc"] == 0 and result["fresh_request_status"] == 200
        assert result["engine_pid"] is not None and result["rss_kb_end"]["engine"] > 0
        assert SECRET not in srv.tail()
    finally:
        assert srv.stop() == 0
    with pytest.raises(SystemExit, match="loopback"):
        check_loopback("http://10.1.2.3:8000/v1")
    with pytest.raises(SystemExit, match="soak-duration"):
        run_soak(SoakSpec(srv.url + "/v1", duration_s=10**6))


def test_limit_flags_cors_and_request_logging(tiny_llada2: Path) -> None:
    srv = RemoteServer(tiny_llada2, "--log-level", "info", "--log-requests",
                       "--cors-origins", "http://ok.example", "--max-stop-strings", "2",
                       "--max-stop-length", "8", "--max-tool-schema-bytes", "400",
                       "--max-n", "3", "--max-tokens-limit", "20")
    try:
        def post(path: str, body: dict[str, object]) -> httpx.Response:
            return httpx.post(srv.url + path, headers=H, json=body, timeout=60)

        ok = post("/v1/completions", {"prompt": SECRET, "max_tokens": 20, "n": 3,
                                      "stop": ["a", "b"]})
        assert ok.status_code == 200, ok.text
        msg = [{"role": "user", "content": "hi"}]
        small = [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"x": {"type": "string"}}}}}]
        big = [{"type": "function", "function": {"name": "f", "description": "d" * 500}}]
        refused = {
            "max_tokens": post("/v1/completions", {"prompt": "x", "max_tokens": 21}),
            "n": post("/v1/completions", {"prompt": "x", "n": 4}),
            "stop": post("/v1/completions", {"prompt": "x", "stop": ["a", "b", "c"]}),
            "stop length": post("/v1/completions", {"prompt": "x", "stop": ["123456789"]}),
            "tools": post("/v1/chat/completions", {"messages": msg, "tools": big}),
        }
        for name, r in refused.items():
            assert r.status_code == 400, (name, r.text)
            assert r.json()["error"]["type"] == "BadRequestError", name
        assert post("/v1/chat/completions", {"messages": msg, "tools": small,
                                             "max_tokens": 4}).status_code == 200
        assert _cors(srv, "http://ok.example") == "http://ok.example"
        assert _cors(srv, "http://evil.example") is None
        assert SECRET in srv.tail()  # --log-requests: prompts are logged
    finally:
        assert srv.stop() == 0
