"""Completions and chat completions: an OpenAI request → engine requests (one per prompt and
choice) → a JSON response or an SSE stream that grows with every denoise step."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from server.api.async_engine import AsyncEngine
from server.api.errors import APIError
from server.api.logprobs import LogprobFormatter
from server.api.metrics import Metrics
from server.api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    NamedToolChoice,
    SamplingFields,
    Tool,
)
from server.api.tools import ParsedOutput, ToolParser
from server.api.tools.base import FirstCallOnly, ToolStream
from server.core import (
    EDITING_OFF,
    CanvasFrame,
    EngineOutput,
    FinishReason,
    GenerateRequest,
    GrammarKind,
    GrammarSpec,
    SamplingParams,
    TokenLogprob,
)
from server.engine.detokenizer import IncrementalDetokenizer
from server.model.tokenizer import TokenizerInfo

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
_suffix = itertools.count()


@dataclass
class Choice:
    """One engine request seen from the API process."""

    index: int
    rid: str
    prompt_ids: list[int]
    prompt_text: str | None
    detok: IncrementalDetokenizer
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None
    bad_request: bool = False  # the engine refused the request (e.g. its grammar)
    start: float = field(default_factory=time.monotonic)
    last: float | None = None
    parser: ToolParser | None = None  # set when tool calls are parsed from this choice
    tool_stream: ToolStream | None = None
    forced_tool: bool = False  # tool_choice named a function: finish_reason stays "stop"
    logprobs: list[TokenLogprob] | None = None  # one per token_ids entry, when asked
    prompt_logprobs: list[TokenLogprob | None] | None = None  # echo + logprobs (AR)

    def parsed(self) -> ParsedOutput:
        if self.parser is None:
            return ParsedOutput(self.text, [])
        return self.parser.parse(self.text)

    def chat_finish_reason(self, made_calls: bool) -> str | None:
        if made_calls and self.finish_reason == "stop" and not self.forced_tool:
            return "tool_calls"
        return self.finish_reason


@dataclass
class Event:
    choice: Choice
    text: str
    token_ids: list[int]
    finished: bool
    logprobs: list[TokenLogprob] | None = None  # of `token_ids`, when asked
    canvas: dict[str, Any] | None = None  # the step's `canvas` object, when asked


class OpenAIServing:
    def __init__(self, engine: AsyncEngine, tokenizer: TokenizerInfo, model_name: str,
                 metrics: Metrics, tool_parser: ToolParser | None = None) -> None:
        self.engine, self.tok = engine, tokenizer
        self.logprob_format = LogprobFormatter(tokenizer)
        self.model_name, self.metrics = model_name, metrics
        self.tool_parser = tool_parser

    # -- request → choices ----------------------------------------------------------------
    def _limits(self, prompt_len: int, requested: int | None, default: int | None,
                param: str) -> int:
        """max_tokens clamped to the room left (the final block must fit, as the engine
        needs); a prompt with no room is a 400 in the wording LiteLLM recognises."""
        info = self.engine.info
        block = max(1, info.block_size)
        limit = info.max_model_len // block * block
        room = limit - prompt_len
        if room < 1:
            raise APIError(400, f"This model's maximum context length is {info.max_model_len} "
                                f"tokens. However, your prompt contains {prompt_len} input "
                                "tokens, which leaves no room to generate.", "BadRequestError",
                           param, "context_length_exceeded")
        return min(requested or default or room, room)

    def _params(self, req: SamplingFields, max_tokens: int, index: int,
                constrained: bool = False) -> SamplingParams:
        seed = None if req.seed is None else req.seed + index
        prompt_lp = req.prompt_logprobs_wanted()
        canvas = bool(req.stream_options and req.stream_options.include_canvas)
        if canvas and self.engine.info.mode != "diffusion":
            raise APIError(400, "include_canvas shows the active block of a block-diffusion "
                                "model; this one is autoregressive",
                           param="stream_options.include_canvas")
        if prompt_lp is not None and self.engine.info.mode == "diffusion":
            raise APIError(400, "prompt log-probabilities (`echo` with `logprobs`) are not "
                                "defined for a block-diffusion model, which has no "
                                "left-to-right distribution over its prompt", param="echo")
        try:
            params = SamplingParams(
                max_tokens=max_tokens, temperature=req.temperature or 0.0,
                top_k=req.top_k or 0, top_p=req.top_p if req.top_p is not None else 1.0,
                seed=seed, threshold=req.threshold, stop=req.stop_list(),
                stop_token_ids=tuple(req.stop_token_ids or ()), ignore_eos=req.ignore_eos,
                editing_threshold=req.editing_threshold, max_post_steps=req.max_post_steps,
                logprobs=req.top_logprobs_wanted(), prompt_logprobs=prompt_lp,
                logit_bias=req.bias_pairs(),
                min_tokens=req.min_tokens or 0, canvas=canvas)
        except ValueError as e:
            raise APIError(400, str(e)) from None
        self._check_levenshtein(req, params, constrained)
        return params

    def _check_levenshtein(self, req: SamplingFields, p: SamplingParams, constrained: bool
                           ) -> None:
        """LLaDA2.2 editing is greedy and moves cells (docs/llada22.md): a request that will
        edit may not sample, ask for log-probabilities or a positional `min_tokens`.
        Constrained requests never edit."""
        info = self.engine.info
        t = req.editing_threshold
        edits = t not in (None, EDITING_OFF) or (t is None and info.editing_default)
        if not info.levenshtein or not edits or constrained:
            return
        why = ("with LLaDA2.2 Levenshtein editing on (editing_threshold \"off\" allows it): "
               "decoding is greedy and cells move within a block")
        if not p.greedy:
            raise APIError(400, f"temperature > 0 is refused {why}", param="temperature")
        if p.logprobs is not None:
            raise APIError(400, f"logprobs are refused {why}", param="logprobs")
        if p.min_tokens:
            raise APIError(400, f"min_tokens is refused {why}", param="min_tokens")

    def _check_ids(self, ids: list[int], param: str) -> None:
        vocab = self.engine.info.vocab_size
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} is outside the vocabulary [0, {vocab})",
                           param=param)

    def _choices(self, prompts: list[tuple[str | None, list[int]]], req: SamplingFields,
                 max_tokens: int | None, default: int | None, request_id: str, param: str,
                 grammar: GrammarSpec | None = None, parser: ToolParser | None = None
                 ) -> list[tuple[Choice, GenerateRequest]]:
        out = []
        for p_idx, (text, ids) in enumerate(prompts):
            self._check_ids(ids, param)
            limit = self._limits(len(ids), max_tokens, default, param)
            for i in range(req.n):
                index = p_idx * req.n + i
                params = self._params(req, limit, i, constrained=grammar is not None)
                rid = f"{request_id}-{next(_suffix)}"
                decoder = self.tok.keeping(parser.keep_tokens) if parser else self.tok
                detok = IncrementalDetokenizer(decoder, params.stop)
                choice = Choice(index, rid, ids, text, detok, parser=parser,
                                tool_stream=parser.stream() if parser else None)
                out.append((choice, GenerateRequest(rid, tuple(ids), params, grammar=grammar)))
        return out

    def completion_choices(self, req: CompletionRequest, request_id: str
                           ) -> list[tuple[Choice, GenerateRequest]]:
        p = req.prompt
        prompts: list[tuple[str | None, list[int]]]
        if isinstance(p, str):
            prompts = [(p, self.tok.encode(p))]
        elif isinstance(p[0], str):
            prompts = [(s, self.tok.encode(s)) for s in p]
        elif isinstance(p[0], int):
            prompts = [(None, list(p))]
        else:
            prompts = [(None, list(ids)) for ids in p]
        if req.echo:  # token-id prompts echo their text, special tokens included
            for _, ids in prompts:
                self._check_ids(ids, "prompt")
            prompts = [(self.tok.decode(ids, skip_special_tokens=False) if text is None
                        else text, ids) for text, ids in prompts]
        return self._choices(prompts, req, req.max_tokens, COMPLETION_DEFAULT_MAX_TOKENS,
                             request_id, "prompt")

    def chat_choices(self, req: ChatCompletionRequest, request_id: str
                     ) -> list[tuple[Choice, GenerateRequest]]:
        from server.api.chat import render_chat_prompt

        choice = req.effective_tool_choice
        tools = req.tools if choice != "none" else None
        if tools and self.tool_parser is None:
            raise APIError(400, "this model has no tool-call parser; start the server with "
                                "--tool-call-parser", param="tools")
        for t in tools or []:
            if t.function.parameters is not None:
                _check_schema(t.function.parameters, "tools")
        ids = render_chat_prompt(self.tok, req.messages, tools)
        max_tokens = req.max_completion_tokens or req.max_tokens
        parser = self.tool_parser if tools else None
        if parser is not None and not req.parallel_tool_calls:
            parser = FirstCallOnly(parser)
        pairs = self._choices([(None, ids)], req, max_tokens, None, request_id, "messages",
                              self._grammar(req, choice, tools or []), parser)
        for c, _ in pairs:
            c.forced_tool = isinstance(choice, NamedToolChoice)
        return pairs

    def _grammar(self, req: ChatCompletionRequest, choice: str | NamedToolChoice,
                 tools: list[Tool]) -> GrammarSpec | None:
        fmt = req.response_format
        if fmt is not None and fmt.type == "json_object":
            return GrammarSpec(GrammarKind.JSON_OBJECT)
        if fmt is not None and fmt.type == "json_schema":
            assert fmt.json_schema is not None
            schema = fmt.json_schema.json_schema
            _check_schema(schema, "response_format")
            return GrammarSpec(GrammarKind.JSON_SCHEMA, json.dumps(schema))
        if choice == "required" or isinstance(choice, NamedToolChoice):
            assert self.tool_parser is not None
            named = choice.function.name if isinstance(choice, NamedToolChoice) else None
            chosen = [t.model_dump(exclude_none=True) for t in tools
                      if named is None or t.function.name == named]
            tag = self.tool_parser.structural_tag(
                chosen, parallel=named is None and req.parallel_tool_calls,
                special_tokens=self.tok.special_tokens)
            return GrammarSpec(GrammarKind.STRUCTURAL_TAG, json.dumps(tag))
        return None

    # -- running --------------------------------------------------------------------------
    async def events(self, pairs: list[tuple[Choice, GenerateRequest]]
                     ) -> AsyncIterator[Event]:
        """Every choice's deltas as they come, merged. Leaving early aborts the rest."""
        merged: asyncio.Queue[Event | None] = asyncio.Queue()

        async def pump(choice: Choice, req: GenerateRequest) -> None:
            try:
                async for out in self.engine.generate(req):
                    if self._absorb(choice, out, merged):
                        return  # a stop string ended it: leaving aborts the engine request
            finally:
                merged.put_nowait(None)

        for choice, _ in pairs:
            self.metrics.prompt_tokens.labels(self.model_name).inc(len(choice.prompt_ids))
        tasks = [asyncio.create_task(pump(c, r)) for c, r in pairs]
        try:
            done = 0
            while done < len(tasks):
                ev = await merged.get()
                if ev is None:
                    done += 1
                else:
                    yield ev
            for t in tasks:
                t.result()  # surface engine death
        finally:
            for t in tasks:
                t.cancel()

    def _absorb(self, c: Choice, out: EngineOutput, q: asyncio.Queue[Event | None]) -> bool:
        now = time.monotonic()
        c.token_ids.extend(out.new_token_ids)
        if out.logprobs is not None:
            c.logprobs = (c.logprobs or []) + out.logprobs
        if out.prompt_logprobs is not None:
            c.prompt_logprobs = out.prompt_logprobs
        text = c.detok.feed(out.new_token_ids, final=out.finished)
        c.text += text
        stopped = c.detok.stopped is not None
        finished = out.finished or stopped
        if out.new_token_ids:
            m = self.model_name
            self.metrics.generation_tokens.labels(m).inc(len(out.new_token_ids))
            if c.last is None:
                self.metrics.ttft.labels(m).observe(now - c.start)
            else:
                self.metrics.itl.labels(m).observe(now - c.last)
            c.last = now
        if finished:
            reason = out.finish_reason
            c.finish_reason = "stop" if stopped else (reason.value if reason else "stop")
            c.error = out.error if reason is FinishReason.ERROR else None
            c.bad_request = out.bad_request
            self._record_finish(c, out)
        canvas = None if out.canvas is None else self._canvas(c, out.canvas)
        q.put_nowait(Event(c, text, out.new_token_ids, finished, out.logprobs, canvas))
        return stopped and not out.finished

    def _canvas(self, c: Choice, f: CanvasFrame) -> dict[str, Any]:
        """The `canvas` extension object of one step (docs/playground.md)."""
        return {"block_start": f.block_start, "prompt_len": len(c.prompt_ids),
                "tokens": list(f.tokens),
                "text": [None if t is None else self._cell_text(t) for t in f.tokens],
                "committed": list(f.committed), "edited": list(f.edited),
                "confidence": [None if p is None else round(p, 4) for p in f.confidence],
                "step": f.step, "forwards": f.forwards, "block_done": f.block_done}

    @functools.lru_cache(maxsize=65536)  # noqa: B019 - lives as long as the server
    def _cell_text(self, token: int) -> str:
        return self.tok.decode([token], skip_special_tokens=False)

    def _record_finish(self, c: Choice, out: EngineOutput) -> None:
        m = self.model_name
        assert c.finish_reason is not None  # recorded once the choice finished
        self.metrics.success.labels(m, c.finish_reason).inc()
        self.metrics.e2e.labels(m).observe(time.monotonic() - c.start)
        self.metrics.request_prompt.labels(m).observe(len(c.prompt_ids))
        self.metrics.request_generation.labels(m).observe(len(c.token_ids))
        st = out.stats
        if st is not None and st.first_scheduled_time is not None:
            self.metrics.queue.labels(m).observe(max(0.0, st.first_scheduled_time
                                                     - st.arrival_time))


def _check_schema(schema: object, param: str) -> None:
    from server.grammar.compiler import GrammarError, check_schema

    try:
        check_schema(schema)
    except GrammarError as e:
        raise APIError(400, str(e), param=param) from None


def usage(choices: list[Choice], n: int) -> dict[str, int]:
    """Prompt tokens count once per prompt (not per choice), as vLLM does."""
    prompt = sum(len(c.prompt_ids) for c in choices if c.index % n == 0)
    completion = sum(len(c.token_ids) for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"
