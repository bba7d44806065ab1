"""Training data: the running interpreter's standard-library sources (pretraining corpus) and a
generated chat set of Python requests and tool-calling conversations (SFT). Deterministic for a
seed: fixed file order, fixed generator, fixed train/validation split.

The stdlib sources are © Python Software Foundation, PSF License Agreement (the `LICENSE` file
next to the interpreter's stdlib); they are read at training time, never shipped."""

from __future__ import annotations

import json
import random
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# (name, args, description, body lines, tests [(args tuple, expected)])
FUNCS: list[tuple[str, str, str, list[str], list[tuple[tuple, Any]]]] = [
    ("add", "a, b", "returns the sum of a and b", ["return a + b"], [((2, 3), 5), ((-1, 1), 0)]),
    ("subtract", "a, b", "returns a minus b", ["return a - b"], [((5, 3), 2), ((0, 4), -4)]),
    ("multiply", "a, b", "returns the product of a and b", ["return a * b"],
     [((3, 4), 12), ((0, 9), 0)]),
    ("square", "x", "returns the square of x", ["return x * x"], [((3,), 9), ((-2,), 4)]),
    ("cube", "x", "returns x cubed", ["return x * x * x"], [((2,), 8), ((-1,), -1)]),
    ("is_even", "n", "checks whether n is even", ["return n % 2 == 0"],
     [((4,), True), ((7,), False)]),
    ("is_odd", "n", "checks whether n is odd", ["return n % 2 == 1"],
     [((3,), True), ((8,), False)]),
    ("absolute", "x", "returns the absolute value of x", ["return x if x >= 0 else -x"],
     [((-5,), 5), ((3,), 3)]),
    ("maximum", "a, b", "returns the larger of a and b", ["return a if a > b else b"],
     [((2, 9), 9), ((7, 1), 7)]),
    ("minimum", "a, b", "returns the smaller of a and b", ["return a if a < b else b"],
     [((2, 9), 2), ((7, 1), 1)]),
    ("factorial", "n", "returns the factorial of n",
     ["result = 1", "for i in range(2, n + 1):", "    result *= i", "return result"],
     [((5,), 120), ((0,), 1)]),
    ("fibonacci", "n", "returns the n-th Fibonacci number",
     ["a, b = 0, 1", "for _ in range(n):", "    a, b = b, a + b", "return a"],
     [((10,), 55), ((1,), 1)]),
    ("reverse_string", "s", "returns the string s reversed", ["return s[::-1]"],
     [(("abc",), "cba"), (("",), "")]),
    ("count_vowels", "s", "counts the vowels in the string s",
     ["return sum(1 for c in s if c in \"aeiou\")"], [(("hello",), 2), (("xyz",), 0)]),
    ("is_palindrome", "s", "checks whether the string s is a palindrome",
     ["return s == s[::-1]"], [(("level",), True), (("abc",), False)]),
    ("list_sum", "xs", "returns the sum of the numbers in the list xs",
     ["total = 0", "for x in xs:", "    total += x", "return total"],
     [(([1, 2, 3],), 6), (([],), 0)]),
    ("list_max", "xs", "returns the largest item of the list xs", ["return max(xs)"],
     [(([1, 5, 3],), 5), (([-2],), -2)]),
    ("average", "xs", "returns the average of the numbers in xs", ["return sum(xs) / len(xs)"],
     [(([1, 2, 3],), 2.0), (([4],), 4.0)]),
    ("first_item", "xs", "returns the first item of the list xs", ["return xs[0]"],
     [(([7, 8],), 7), ((["a"],), "a")]),
    ("last_item", "xs", "returns the last item of the list xs", ["return xs[-1]"],
     [(([7, 8],), 8), ((["a"],), "a")]),
    ("double_all", "xs", "returns a list with every number in xs doubled",
     ["return [x * 2 for x in xs]"], [(([1, 2],), [2, 4]), (([],), [])]),
    ("filter_even", "xs", "returns the even numbers of the list xs",
     ["return [x for x in xs if x % 2 == 0]"], [(([1, 2, 3, 4],), [2, 4]), (([1],), [])]),
    ("count_words", "s", "counts the words in the string s", ["return len(s.split())"],
     [(("a b c",), 3), (("",), 0)]),
    ("to_upper", "s", "returns the string s in upper case", ["return s.upper()"],
     [(("abc",), "ABC"), (("Hi",), "HI")]),
    ("celsius_to_fahrenheit", "c", "converts a temperature from Celsius to Fahrenheit",
     ["return c * 9 / 5 + 32"], [((100,), 212.0), ((0,), 32.0)]),
    ("is_positive", "x", "checks whether x is greater than zero", ["return x > 0"],
     [((3,), True), ((-1,), False)]),
    ("clamp", "x, lo, hi", "limits x to the range from lo to hi",
     ["return max(lo, min(x, hi))"], [((5, 0, 3), 3), ((-1, 0, 3), 0)]),
    ("gcd", "a, b", "returns the greatest common divisor of a and b",
     ["while b:", "    a, b = b, a % b", "return a"], [((12, 18), 6), ((7, 3), 1)]),
    ("power", "base, exp", "returns base raised to the power exp", ["return base ** exp"],
     [((2, 10), 1024), ((3, 0), 1)]),
    ("unique", "xs", "returns the sorted unique items of xs", ["return sorted(set(xs))"],
     [(([3, 1, 3],), [1, 3]), (([],), [])]),
    ("join_words", "words", "joins the list of words with spaces",
     ["return \" \".join(words)"], [((["a", "b"],), "a b"), (([],), "")]),
    ("char_count", "s, ch", "counts how often the character ch occurs in s",
     ["return s.count(ch)"], [(("banana", "a"), 3), (("x", "y"), 0)]),
    ("is_empty", "xs", "checks whether the list xs is empty", ["return len(xs) == 0"],
     [(([],), True), (([1],), False)]),
    ("flatten", "xss", "flattens a list of lists into one list",
     ["return [x for xs in xss for x in xs]"], [(([[1], [2, 3]],), [1, 2, 3]), (([],), [])]),
    ("sum_of_squares", "n", "returns the sum of the squares from 0 to n",
     ["return sum(i * i for i in range(n + 1))"], [((3,), 14), ((0,), 0)]),
    ("head", "xs, n", "returns the first n items of xs", ["return xs[:n]"],
     [(([1, 2, 3], 2), [1, 2]), (([1], 0), [])]),
    ("starts_with", "s, prefix", "checks whether s starts with prefix",
     ["return s.startswith(prefix)"], [(("hello", "he"), True), (("hello", "lo"), False)]),
    ("count_positive", "xs", "counts the positive numbers in xs",
     ["return sum(1 for x in xs if x > 0)"], [(([1, -2, 3],), 2), (([],), 0)]),
    ("product", "xs", "returns the product of the numbers in xs",
     ["result = 1", "for x in xs:", "    result *= x", "return result"],
     [(([2, 3, 4],), 24), (([],), 1)]),
    ("swap", "a, b", "returns a and b swapped", ["return b, a"], [((1, 2), (2, 1))]),
]

TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "convert_currency", "description": "Convert an amount between currencies",
        "parameters": {"type": "object", "properties": {
            "amount": {"type": "number"}, "source": {"type": "string"},
            "target": {"type": "string"}}, "required": ["amount", "source", "target"]}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Get the local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "run_python", "description": "Run Python code and return its output",
        "parameters": {"type": "object", "properties": {"code": {"type": "string"}},
                       "required": ["code"]}}},
]
CITIES = ["Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome", "Oslo", "Lima", "Cairo",
          "Seoul", "Sydney", "Toronto", "Dublin", "Vienna", "Prague", "Lisbon", "Athens",
          "Nairobi", "Mumbai", "Denver"]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "CAD"]
CONDITIONS = ["sunny", "cloudy", "rainy", "windy", "snowy"]

WRITE = ["Write a Python function `{name}({args})` that {desc}.",
         "Write a function named {name} that {desc}.",
         "Can you write a Python function that {desc}? Call it {name}.",
         "Implement {name}({args}) in Python: it {desc}."]
WEATHER = ["What is the weather in {city}?", "How is the weather in {city} today?",
           "Is it raining in {city}?"]
TIME = ["What time is it in {city}?", "Tell me the local time in {city}."]
CONVERT = ["Convert {amount} {source} to {target}.", "How much is {amount} {source} in {target}?"]
RUN = ["Run this Python code: print({a} + {b})", "What does print({a} * {b}) output? Run it."]


@dataclass(frozen=True)
class ChatExample:
    """One supervised assistant turn: `messages` end with the target assistant message."""

    kind: str  # write | explain | complete | tool_call | tool_answer | no_tool
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    func: str | None = None  # FUNCS name for code tasks (pass-rate tests)


def code_block(name: str, args: str, body: list[str], doc: str | None = None) -> str:
    lines = [f"def {name}({args}):"] + ([f'    """{doc}"""'] if doc else [])
    return "\n".join(lines + ["    " + b for b in body])


def _doc(desc: str) -> str:
    return desc[0].upper() + desc[1:] + "."


def _call(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


def chat_examples(seed: int = 0, per_func: int = 6, per_tool: int = 40) -> list[ChatExample]:
    """The generated SFT set, in a fixed order for a seed."""
    rng = random.Random(seed)
    out: list[ChatExample] = []
    for name, args, desc, body, _ in FUNCS:
        code = code_block(name, args, body)
        for _ in range(per_func):
            req = rng.choice(WRITE).format(name=name, args=args, desc=desc)
            ans = f"Here is the function:\n```python\n{code}\n```"
            out.append(ChatExample("write", _turn(req, ans), None, name))
        out.append(ChatExample("explain", _turn(
            f"Explain what this function does:\n```python\n{code}\n```",
            f"The function `{name}` {desc}."), None, name))
        stub = code_block(name, args, [], _doc(desc))
        out.append(ChatExample("complete", _turn(
            f"Complete this Python function:\n```python\n{stub}\n```",
            f"```python\n{code_block(name, args, body, _doc(desc))}\n```"), None, name))
        req = rng.choice(WRITE).format(name=name, args=args, desc=desc)
        out.append(ChatExample("no_tool", _turn(req, f"Here is the function:\n```python\n{code}\n"
                                                     "```"), _tools(rng), name))
    for _ in range(per_tool):
        out.extend(_tool_conversation(rng))
    return out


def _turn(user: str, assistant: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _tools(rng: random.Random) -> list[dict[str, Any]]:
    k = rng.randint(1, 2)
    return [TOOLS[i] for i in sorted(rng.sample(range(len(TOOLS)), k))]


def _tool_conversation(rng: random.Random) -> list[ChatExample]:
    """A request that needs a tool: the call turn, then the final answer after the result."""
    kind = rng.choice(["get_weather", "get_time", "convert_currency", "run_python"])
    city = rng.choice(CITIES)
    if kind == "get_weather":
        user, args = rng.choice(WEATHER).format(city=city), {"city": city}
        t, cond = rng.randint(-5, 35), rng.choice(CONDITIONS)
        result, answer = {"temperature": t, "condition": cond}, f"It is {t}°C and {cond} in {city}."
    elif kind == "get_time":
        user, args = rng.choice(TIME).format(city=city), {"city": city}
        hhmm = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
        result, answer = {"time": hhmm}, f"It is {hhmm} in {city}."
    elif kind == "convert_currency":
        src, dst = rng.sample(CURRENCIES, 2)
        amount = rng.choice([5, 10, 20, 50, 100, 250])
        user = rng.choice(CONVERT).format(amount=amount, source=src, target=dst)
        args = {"amount": amount, "source": src, "target": dst}
        value = round(amount * rng.uniform(0.5, 1.5), 2)
        result, answer = {"result": value}, f"{amount} {src} is {value} {dst}."
    else:
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        user = rng.choice(RUN).format(a=a, b=b)
        op = "+" if "+" in user else "*"
        value = a + b if op == "+" else a * b
        args = {"code": f"print({a} {op} {b})"}
        result, answer = {"stdout": f"{value}\n"}, f"The code printed {value}."
    tools = _tools(rng)
    if not any(t["function"]["name"] == kind for t in tools):
        tools = sorted(tools + [next(t for t in TOOLS if t["function"]["name"] == kind)],
                       key=TOOLS.index)
    call = {"role": "assistant", "content": "", "tool_calls": [_call(kind, args)]}
    first = [{"role": "user", "content": user}, call]
    second = first + [{"role": "tool", "content": json.dumps(result)},
                      {"role": "assistant", "content": answer}]
    return [ChatExample("tool_call", first, tools), ChatExample("tool_answer", second, tools)]


def split(items: list, seed: int, val_fraction: float) -> tuple[list, list]:
    """Fixed-seed shuffle, then the first `val_fraction` is validation."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(len(items) * val_fraction))
    return [items[i] for i in order[n_val:]], [items[i] for i in order[:n_val]]


def stdlib_files() -> list[Path]:
    """Every .py under the interpreter's stdlib (site-packages excluded), sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py")
                  if "site-packages" not in p.parts and "dist-packages" not in p.parts)


def stdlib_corpus(max_chars: int, seed: int = 0) -> list[str]:
    """Whole stdlib files in a fixed-seed order until `max_chars`; files over 40 kB skipped."""
    files = stdlib_files()
    random.Random(seed).shuffle(files)
    docs, total = [], 0
    for p in files:
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip() or len(text) > 40_000:
            continue
        docs.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return docs


def corpus_note() -> str:
    return (f"Python {sys.version.split()[0]} stdlib at {sysconfig.get_paths()['stdlib']} "
            f"({len(stdlib_files())} .py files), PSF License")
