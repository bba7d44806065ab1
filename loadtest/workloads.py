"""Workloads: lists of `WorkItem`s built from a seed, so every target sees the same requests.

With a tokenizer (`--tokenizer`, a Hugging Face directory or hub id) random prompts are exact
token-id lists of the requested length; without one they are words (≈ one token each)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_TEXT = ("the model writes a block of tokens at a time and commits every position whose "
         "confidence is above the threshold while the scheduler batches many requests into "
         "shared denoise steps with paged caches reused across committed blocks")
WORDS = tuple(_TEXT.split(" "))

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "search_docs", "description": "Search the documentation.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                       "required": ["query"]}}},
]


@dataclass
class WorkItem:
    """One request: `prompt` for /v1/completions or `messages` for /v1/chat/completions."""

    output_len: int
    prompt: str | list[int] | None = None
    messages: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. tools, tool_choice

    @property
    def chat(self) -> bool:
        return self.messages is not None


class PromptMaker:
    def __init__(self, rng: random.Random, tokenizer: Any | None) -> None:
        self.rng, self.tok = rng, tokenizer
        if tokenizer is not None:
            special = set(tokenizer.all_special_ids) | {
                i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
            self.ids = [i for i in range(len(tokenizer)) if i not in special]

    def make(self, n: int) -> str | list[int]:
        if self.tok is not None:
            return [self.rng.choice(self.ids) for _ in range(n)]
        return " ".join(self.rng.choice(WORDS) for _ in range(n))

    def count(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False)) if self.tok else \
            len(text.split())


def _lens(rng: random.Random, mean: int, ratio: float) -> int:
    """vLLM's range ratio: uniform in [mean·(1−r), mean·(1+r)], at least 1."""
    lo, hi = int(mean * (1 - ratio)), int(mean * (1 + ratio))
    return max(1, rng.randint(lo, hi) if hi > lo else mean)


def random_workload(n: int, input_len: int, output_len: int, range_ratio: float, seed: int,
                    tokenizer: Any | None = None) -> list[WorkItem]:
    rng = random.Random(seed)
    pm = PromptMaker(rng, tokenizer)
    return [WorkItem(_lens(rng, output_len, range_ratio),
                     prompt=pm.make(_lens(rng, input_len, range_ratio))) for _ in range(n)]


def shared_prefix_workload(n: int, groups: int, prefix_len: int, input_len: int,
                           output_len: int, seed: int, tokenizer: Any | None = None
                           ) -> list[WorkItem]:
    """`groups` system prompts of `prefix_len` shared by the requests, each with its own tail."""
    rng = random.Random(seed)
    pm = PromptMaker(rng, tokenizer)
    prefixes = [pm.make(prefix_len) for _ in range(groups)]
    items = []
    for i in range(n):
        head, tail = prefixes[i % groups], pm.make(input_len)
        prompt = head + tail if isinstance(head, list) and isinstance(tail, list) \
            else f"{head} {tail}"
        items.append(WorkItem(output_len, prompt=prompt))
    return items


def tools_workload(n: int, output_len: int, seed: int, tool_choice: str = "auto"
                   ) -> list[WorkItem]:
    rng = random.Random(seed)
    cities = ["Paris", "Lagos", "Lima", "Osaka", "Oslo", "Quito"]
    return [WorkItem(output_len, messages=[
        {"role": "system", "content": "You can call tools."},
        {"role": "user", "content": f"What is the weather in {rng.choice(cities)}? Also look "
                                    f"up '{rng.choice(WORDS)}' in the docs."}],
        extra={"tools": TOOLS, "tool_choice": tool_choice}) for _ in range(n)]


def jsonl_workload(path: Path, output_len: int, n: int | None = None) -> list[WorkItem]:
    """One JSON object per line: `prompt` (string or ids) or `messages`; optional
    `max_tokens` / `output_len` overriding `output_len`."""
    items = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        d = json.loads(line)
        out = int(d.get("max_tokens") or d.get("output_len") or output_len)
        items.append(WorkItem(out, prompt=d.get("prompt"), messages=d.get("messages")))
    return items[:n] if n else items


def sharegpt_workload(path: Path, n: int, seed: int, tokenizer: Any | None = None,
                      output_len: int | None = None) -> list[WorkItem]:
    """ShareGPT JSON: first human turn as the prompt, the reply's length as output length;
    vLLM's filters (prompt or reply < 4 tokens, prompt > 1024, total > 2048 are skipped)."""
    data = json.loads(path.read_text())
    rng = random.Random(seed)
    rng.shuffle(data)
    pm = PromptMaker(rng, tokenizer)
    items = []
    for conv in data:
        turns = conv.get("conversations") or []
        if len(turns) < 2:
            continue
        prompt, reply = turns[0]["value"], turns[1]["value"]
        p, o = pm.count(prompt), output_len or pm.count(reply)
        if p < 4 or o < 4 or p > 1024 or p + o > 2048:
            continue
        items.append(WorkItem(o, messages=[{"role": "user", "content": prompt}]))
        if len(items) == n:
            break
    return items
