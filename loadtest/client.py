"""One streaming OpenAI request, timed as `vllm bench serve` times it. Never raises: a refused
connection, a non-200, a stream cut off or without output all become a failed result with its
reason."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from loadtest.stats import RequestResult
from loadtest.workloads import WorkItem


def payload(item: WorkItem, model: str, ignore_eos: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "stream": True,
                            "stream_options": {"include_usage": True}, "temperature": 0.0}
    if item.chat:
        body |= {"messages": item.messages, "max_completion_tokens": item.output_len}
    else:
        body |= {"prompt": item.prompt, "max_tokens": item.output_len}
    if ignore_eos:
        body["ignore_eos"] = True  # vLLM, SGLang and unmask all accept it
    return body | item.extra


def _has_output(choice: dict[str, Any]) -> bool:
    if "delta" in choice:
        d = choice["delta"] or {}
        return bool(d.get("content") or d.get("tool_calls") or d.get("reasoning_content"))
    return bool(choice.get("text"))


async def send(client: httpx.AsyncClient, base_url: str, item: WorkItem, model: str,
               api_key: str | None = None, ignore_eos: bool = False,
               t0: float = 0.0) -> RequestResult:
    """`base_url` ends in /v1. `t0`: the run's start on the perf_counter clock."""
    url = base_url.rstrip("/") + ("/chat/completions" if item.chat else "/completions")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    res = RequestResult()
    start = time.perf_counter()
    res.start = start - t0
    last = None
    text: list[str] = []
    try:
        async with client.stream("POST", url, json=payload(item, model, ignore_eos),
                                 headers=headers) as r:
            if r.status_code != 200:
                body = (await r.aread()).decode(errors="replace")
                res.error = f"HTTP {r.status_code}: {body[:300]}"
                return res
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data.startswith("[DONE]"):
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    res.error = f"stream error: {chunk['error'].get('message', chunk['error'])}"
                    return res
                if chunk.get("usage"):
                    res.prompt_tokens = chunk["usage"].get("prompt_tokens", 0)
                    res.output_tokens = chunk["usage"].get("completion_tokens", 0)
                choices = chunk.get("choices") or []
                if choices and _has_output(choices[0]):
                    now = time.perf_counter()
                    if last is None:
                        res.ttft = now - start
                    else:
                        res.itls.append(now - last)
                    last = now
                    c = choices[0]
                    text.append((c.get("delta") or {}).get("content") or c.get("text") or "")
    except (httpx.HTTPError, json.JSONDecodeError, OSError) as e:
        res.error = f"{type(e).__name__}: {e}"[:300] or type(e).__name__
        return res
    if last is None:
        res.error = "no output chunk"
        return res
    res.latency = last - start
    res.text = "".join(text)
    res.ok = True
    return res
