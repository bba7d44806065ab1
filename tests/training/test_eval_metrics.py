"""The evaluation's scoring functions on hand-written outputs."""

from __future__ import annotations

import json

from training import data
from training.eval import extract_code, passes, tool_call_exact, tool_call_valid


def _tool_example() -> data.ChatExample:
    return next(e for e in data.chat_examples(0, 1, 4) if e.kind == "tool_call")


def _call(name: str, args: dict) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"


def test_tool_call_scores_separate_well_formed_from_exact() -> None:
    ex = _tool_example()
    want = ex.messages[-1]["tool_calls"][0]["function"]
    args = json.loads(want["arguments"])
    exact = _call(want["name"], args)
    wrong_value = _call(want["name"], {k: "elsewhere" for k in args})
    assert tool_call_valid(exact, ex.tools or []) == (True, want["name"])
    assert tool_call_exact(exact, ex)
    assert tool_call_valid(wrong_value, ex.tools or [])[0]
    assert not tool_call_exact(wrong_value, ex)
    broken = exact.replace("}", "", 1)
    assert not tool_call_valid(broken, ex.tools or [])[0] and not tool_call_exact(broken, ex)
    assert not tool_call_exact("no call here", ex)


def test_pass_rate_runs_the_functions_tests() -> None:
    good = "Here is the function:\n```python\ndef square(x):\n    return x * x\n```"
    assert passes(extract_code(good), "square")
    assert not passes("def square(x):\n    return x + x", "square")
    assert not passes("def square(x):\n    while True: pass", "square")  # 2 s alarm
    assert not passes("this is not python", "square")
