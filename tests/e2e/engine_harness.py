"""Helpers shared by the engine exactness tests: prompts, staggered runs, cached references."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from server.core import Editing, FinishReason, GenerateRequest
from server.engine.engine import Engine
from server.engine.llm import engine_config
from tests.reference.decode import (
    reference_ar_greedy,
    reference_generate,
    reference_generate_editing,
)
from tests.reference.model import ReferenceModel, load_reference


def regular_ids(model_dir: Path) -> list[int]:
    """Token ids that are not special tokens."""
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    special = {t["id"] for t in tok["added_tokens"]}
    n = len(tok["model"]["vocab"])
    return [i for i in range(n) if i not in special]


def make_prompt(model_dir: Path, n: int, seed: int, prefix: list[int] | None = None) -> list[int]:
    pool = regular_ids(model_dir)
    g = torch.Generator().manual_seed(seed)
    ids = [pool[i] for i in torch.randint(0, len(pool), (n,), generator=g).tolist()]
    if prefix:
        ids = prefix + ids[len(prefix):]
    return ids[:n]


def make_engine(model_dir: Path, **options: Any) -> Engine:
    options.setdefault("max_running_requests", 16)
    options.setdefault("num_pages", 512)
    return Engine(engine_config(str(model_dir), **options))


@dataclass
class Run:
    tokens: dict[str, list[int]] = field(default_factory=dict)
    reasons: dict[str, FinishReason] = field(default_factory=dict)
    steps: int = 0
    preempted: int = 0
    prefix_hits: int = 0
    max_running: int = 0


def run(engine: Engine, reqs: list[tuple[Any, ...]], stagger: int = 0) -> Run:
    """Add request i — (rid, ids, params[, grammar]) — at step i*stagger (0: all at once);
    step until everything finished."""
    out = Run()
    pending = list(enumerate(reqs))
    while pending or engine.has_work():
        while pending and pending[0][0] * stagger <= out.steps:
            _, (rid, ids, params, *grammar) = pending.pop(0)
            out.tokens[rid] = []
            engine.add_request(GenerateRequest(rid, tuple(ids), params,
                                               grammar=grammar[0] if grammar else None))
        result = engine.step()
        out.steps += 1
        out.preempted += result.stats.num_preempted
        out.prefix_hits += result.stats.prefix_hit_tokens
        out.max_running = max(out.max_running, result.stats.num_running)
        for o in result.outputs:
            out.tokens[o.rid].extend(o.new_token_ids)
            if o.finished:
                assert o.finish_reason is not None
                out.reasons[o.rid] = o.finish_reason
    return out


_models: dict[Path, ReferenceModel] = {}
_answers: dict[tuple, list[int]] = {}
_traces: dict[tuple, list[tuple[int, bool]]] = {}
_margins: dict[tuple, list[float]] = {}


def reference(model_dir: Path, ids: list[int], max_tokens: int, eos: tuple[int, ...],
              threshold: float = 0.95, ar: bool = False,
              editing: Editing | None = None) -> list[int]:
    return reference_traced(model_dir, ids, max_tokens, eos, threshold, ar, editing).tokens


@dataclass
class Traced:
    tokens: list[int]
    blocks: list[tuple[int, bool]]  # editing only: (forwards, ended by the post-step budget)
    margin: float  # editing only: the closest any decision came to its boundary


def reference_traced(model_dir: Path, ids: list[int], max_tokens: int, eos: tuple[int, ...],
                     threshold: float = 0.95, ar: bool = False, editing: Editing | None = None
                     ) -> Traced:
    key = (model_dir, tuple(ids), max_tokens, eos, threshold, ar, editing)
    if key not in _answers:
        model = _models.get(model_dir) or _models.setdefault(model_dir, load_reference(model_dir))
        trace: list[tuple[int, bool]] = []
        margins: list[float] = [float("inf")]
        _traces[key] = trace
        _margins[key] = margins
        with torch.inference_mode():
            if editing is not None:
                _answers[key] = reference_generate_editing(
                    model, ids, max_tokens, block_length=32, threshold=threshold,
                    editing_threshold=editing.threshold, max_post_steps=editing.max_post_steps,
                    mask_id=_mask_id(model_dir), eos_ids=eos, forwards=trace,
                    margins=margins)
            elif ar:
                _answers[key] = reference_ar_greedy(model, ids, max_tokens, eos_ids=eos)
            else:
                _answers[key] = reference_generate(
                    model, ids, max_tokens, block_length=32, threshold=threshold,
                    mask_id=_mask_id(model_dir), eos_ids=eos)
    return Traced(_answers[key], _traces[key], min(_margins[key]))


def _mask_id(model_dir: Path) -> int:
    from server.model.specials import read_special_ids

    mask = read_special_ids(model_dir).mask_id
    assert mask is not None
    return mask
