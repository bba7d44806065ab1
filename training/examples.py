"""What a served checkpoint answers: starts `unmask serve` on it and asks, through the openai
SDK, the README's example prompts (code requests, tool requests with tools offered, a final
answer after a tool result). Greedy. Writes one JSON line per exchange.

    python -m training examples --model server/checkpoints/llada2 \
        --out benchmarks/results/training/served_examples.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from training.data import TOOLS

CODE = [
    "Write a Python function `is_palindrome(s)` that checks whether the string s is a "
    "palindrome.",
    "Write a function named reverse_string that returns the string s reversed.",
    "Complete this Python function:\n```python\ndef factorial(n):\n"
    '    """Returns the factorial of n."""\n```',
    # outside the training phrasings
    "Give me Python code for a function add_numbers(a, b) that adds two numbers.",
]
TOOL_ASKS = [("What is the weather in Paris?", ["get_weather", "convert_currency"]),
             ("What time is it in Tokyo?", ["get_time"]),
             ("Convert 20 EUR to USD.", ["convert_currency", "get_weather"])]


def _tools(names: list[str]) -> list[dict[str, Any]]:
    return [t for t in TOOLS if t["function"]["name"] in names]


def ask_all(client: Any, model: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for q in CODE:
        r = client.chat.completions.create(model=model, temperature=0, max_tokens=96,
                                           messages=[{"role": "user", "content": q}])
        out.append({"q": q, "a": r.choices[0].message.content,
                    "finish": r.choices[0].finish_reason})
    for q, names in TOOL_ASKS:
        for extra in ({}, {"tool_choice": "required", "parallel_tool_calls": False}):
            r = client.chat.completions.create(
                model=model, temperature=0, max_tokens=64, tools=_tools(names),
                messages=[{"role": "user", "content": q}], **extra)
            m = r.choices[0].message
            out.append({"q": q, "tools": names, **extra, "content": m.content,
                        "tool_calls": [{"name": c.function.name, "arguments": c.function.arguments}
                                       for c in m.tool_calls or []],
                        "finish": r.choices[0].finish_reason})
    # the turn after a tool result: the final answer
    call = {"id": "call_0", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}
    msgs = [{"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_0",
             "content": json.dumps({"temperature": 21, "condition": "sunny"})}]
    r = client.chat.completions.create(model=model, temperature=0, max_tokens=48, messages=msgs,
                                       tools=_tools(["get_weather"]))
    out.append({"q": "What is the weather in Paris? (after the tool result "
                     '{"temperature": 21, "condition": "sunny"})',
                "a": r.choices[0].message.content, "finish": r.choices[0].finish_reason})
    return out


def main(argv: list[str] | None = None) -> int:
    from openai import OpenAI

    from loadtest.local import LocalServer

    p = argparse.ArgumentParser(prog="python -m training examples")
    p.add_argument("--model", default="server/checkpoints/llada2")
    p.add_argument("--out", default=None, help="JSON-lines file (default: stdout only)")
    a = p.parse_args(argv)
    with LocalServer(Path(a.model), "example", "--device", "cpu") as srv:
        rows = ask_all(OpenAI(base_url=srv.url, api_key="none"), "example")
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
