"""Schemathesis against the real server's own OpenAPI schema: every `/v1/*` operation and
/tokenize, /detokenize, valid and invalid generated requests, a fixed number of derandomized
examples. No 5xx; every error is OpenAI-shaped; no response carries a traceback."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from server.api.app import KEYED_PATHS  # noqa: E402
from tests.e2e.server_harness import RemoteServer  # noqa: E402

EXAMPLES = 12  # per operation and mode


def _check(response, case) -> None:  # noqa: ANN001 - schemathesis Response, Case
    where = f"{case.method} {case.path} body={str(case.body)[:300]}"
    assert response.status_code < 500, f"{response.status_code} for {where}: {response.text}"
    assert "Traceback" not in response.text, where
    if response.status_code >= 400:
        err = response.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}, where
        assert isinstance(err["message"], str) and isinstance(err["type"], str), where


def _fuzz(op, mode: GenerationMode, url: str,  # noqa: ANN001 - schemathesis APIOperation
          statuses: Counter[tuple[str, str, int]]) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case) -> None:  # noqa: ANN001
        if mode is GenerationMode.POSITIVE and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = "tiny"  # else nearly all are 404s
        response = case.call(base_url=url, timeout=60)
        statuses[(op.path, mode.value, response.status_code)] += 1
        _check(response, case)

    run()


def test_schemathesis_v1_routes(tiny_llada2: Path) -> None:
    # a short context keeps each generated generation cheap; no API key: bodies are the target
    srv = RemoteServer(tiny_llada2, "--max-model-len", "96", "--max-n", "2", api_key=None)
    try:
        schema = schemathesis.openapi.from_url(srv.url + "/openapi.json")
        ops = [r.ok() for r in schema.get_all_operations()]
        ops = [op for op in ops if op.path.startswith("/v1/") or op.path in KEYED_PATHS]
        assert {op.path for op in ops} == {"/v1/models", "/v1/models/{model}",
                                           "/v1/completions", "/v1/chat/completions",
                                           *KEYED_PATHS}
        statuses: Counter[tuple[str, str, int]] = Counter()
        for op in ops:
            modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE]
                                                 if op.method.upper() == "POST" else [])
            for mode in modes:  # a GET without parameters has no invalid form
                _fuzz(op, mode, srv.url, statuses)
        assert sum(statuses.values()) >= len(ops) * EXAMPLES
        print(sorted(statuses.items()))
        for path in ("/v1/completions", "/v1/chat/completions"):  # meaningful, not all 400s
            assert statuses[(path, "positive", 200)] > 0, statuses
    finally:
        assert srv.stop() == 0
