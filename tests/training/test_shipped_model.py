"""The shipped default model (server/checkpoints/llada2), served for real: the README's code
requests get working Python, and a request that needs a tool gets a well-formed call with tools
merely offered (no grammar constraint)."""

from __future__ import annotations

import json

from openai import OpenAI

from loadtest.local import LocalServer
from server.checkpoints import LLADA2
from training.eval import extract_code, passes
from training.examples import ask_all


def test_shipped_model_answers_the_readme_prompts() -> None:
    with LocalServer(LLADA2, "llada2", "--device", "cpu") as srv:
        rows = ask_all(OpenAI(base_url=srv.url, api_key="none"), "llada2")
    by_q = {(r["q"], r.get("tool_choice")): r for r in rows}
    palindrome = next(r for (q, _), r in by_q.items() if "is_palindrome" in q)
    assert passes(extract_code(palindrome["a"]), "is_palindrome"), palindrome
    factorial = next(r for (q, _), r in by_q.items() if q.startswith("Complete"))
    assert passes(extract_code(factorial["a"]), "factorial"), factorial
    tokyo = by_q[("What time is it in Tokyo?", None)]  # tools offered, tool_choice auto
    assert tokyo["finish"] == "tool_calls" and len(tokyo["tool_calls"]) == 1, tokyo
    call = tokyo["tool_calls"][0]
    assert call["name"] == "get_time" and isinstance(json.loads(call["arguments"])["city"], str)
