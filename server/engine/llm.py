"""Offline API: `LLM(model).generate(prompts, SamplingParams(...))` in this process.

    from server import LLM, SamplingParams
    llm = LLM("path/or/hub-id")
    out = llm.generate(["def fib(n):"], SamplingParams(max_tokens=64))[0]
    print(out.text, out.finish_reason, out.stats.tokens_per_forward)
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

from server.config import CacheConfig, DiffusionConfig, EngineConfig, SchedulerConfig
from server.core import (
    EngineOutput,
    FinishReason,
    GenerateRequest,
    RequestStats,
    SamplingParams,
    new_request_id,
)
from server.engine.detokenizer import IncrementalDetokenizer
from server.engine.engine import Engine

Prompt = str | list[int]


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None
    stats: RequestStats | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


def engine_config(model: str, **kw: Any) -> EngineConfig:
    """Flat keyword arguments → the nested `EngineConfig` (unknown names raise TypeError)."""
    groups: dict[str, Any] = {"cache": CacheConfig, "scheduler": SchedulerConfig,
                              "diffusion": DiffusionConfig}
    nested: dict[str, dict[str, Any]] = {g: {} for g in groups}
    top: dict[str, Any] = {}
    for key, value in kw.items():
        group = next((g for g, cls in groups.items() if key in cls.__dataclass_fields__), None)
        if group is not None:
            nested[group][key] = value
        elif key in EngineConfig.__dataclass_fields__:
            top[key] = value
        else:
            raise TypeError(f"unknown engine option {key!r}")
    return EngineConfig(model=model, **top, **{g: groups[g](**v) for g, v in nested.items()})


class LLM:
    """With `tensor_parallel_size` > 1 the other ranks are processes of their own: `close()`
    (or `with LLM(...) as llm:`) stops them; they are stopped at interpreter exit otherwise."""

    def __init__(self, model: str, **engine_options: Any) -> None:
        from server.model.tokenizer import load_tokenizer

        self.engine = Engine(engine_config(model, **engine_options))
        self._finalizer = weakref.finalize(self, self.engine.close)
        self.tokenizer = load_tokenizer(self.engine.info.model_dir)

    def close(self) -> None:
        """Stop the engine's other ranks, if any (idempotent)."""
        self._finalizer()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(self, prompts: Prompt | Seq[Prompt],
                 params: SamplingParams | Seq[SamplingParams] | None = None
                 ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs in prompt order. A prompt the engine rejects
        gets an output with `error` set and finish_reason 'error'; the others still run."""
        batch = _as_prompt_list(prompts)
        plist = list(params) if isinstance(params, Seq) else [params or SamplingParams()] * len(
            batch)
        if len(plist) != len(batch):
            raise ValueError("need one SamplingParams per prompt")
        outs: dict[str, RequestOutput] = {}
        detok: dict[str, IncrementalDetokenizer] = {}
        order = []
        for prompt, p in zip(batch, plist, strict=True):
            ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
            rid = new_request_id()
            order.append(rid)
            outs[rid] = RequestOutput(rid, prompt if isinstance(prompt, str) else None, ids)
            detok[rid] = IncrementalDetokenizer(self.tokenizer, p.stop)
            try:
                self.engine.add_request(GenerateRequest(rid, tuple(ids), p))
            except ValueError as e:
                outs[rid].error, outs[rid].finish_reason = str(e), FinishReason.ERROR.value
        while self.engine.has_work():
            for o in self.engine.step().outputs:
                self._absorb(o, outs[o.rid], detok[o.rid])
        return [outs[rid] for rid in order]

    def chat(self, messages: list[dict[str, Any]], params: SamplingParams | None = None,
             tools: list[dict[str, Any]] | None = None) -> RequestOutput:
        text = self.tokenizer.apply_chat_template(messages, tools=tools)
        return self.generate([self.tokenizer.encode_prompt(text)], params)[0]

    def _absorb(self, o: EngineOutput, out: RequestOutput, det: IncrementalDetokenizer) -> None:
        out.token_ids.extend(o.new_token_ids)
        out.text += det.feed(o.new_token_ids, final=o.finished)
        if det.stopped is not None and not o.finished:
            o = self.engine.abort(o.rid) or o
            out.finish_reason = FinishReason.STOP.value
        if o.finished:
            out.finish_reason = out.finish_reason or (o.finish_reason.value
                                                      if o.finish_reason else None)
            out.error, out.stats = o.error, o.stats


def _as_prompt_list(prompts: Prompt | Seq[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, list) and prompts and isinstance(prompts[0], int):
        return [prompts]  # one prompt of ids
    return list(prompts)
