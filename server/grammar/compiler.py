"""`GrammarCompilerPool`: GrammarSpec → xgrammar CompiledGrammar on worker threads, cached by spec.

Output JSON is compact (no free whitespace: a weak model cannot loop on blanks) and strict (no
properties beyond the schema). xgrammar 0.2.8 lets length-limited strings (`maxLength`) contain
raw control characters, which JSON forbids; every grammar's string class is tightened here.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from server.core import GrammarKind, GrammarSpec

_LOOSE_CHAR = '[^\\"\\\\\\r\\n]'  # as xgrammar prints it: [^\"\\\r\n]
_STRICT_CHAR = '[^\\0-\\x1f\\"\\\\\\r\\n]'


class GrammarError(ValueError):
    """The spec cannot be compiled (the request's fault)."""


def schema_ebnf(schema: Any) -> str:
    """A JSON schema → EBNF for compact, strict JSON with control characters excluded."""
    import xgrammar as xgr

    text = schema if isinstance(schema, str) else json.dumps(schema)
    ebnf = str(xgr.Grammar.from_json_schema(text, any_whitespace=False, strict_mode=True))
    return ebnf.replace(_LOOSE_CHAR, _STRICT_CHAR)


def check_schema(schema: Any) -> None:
    """GrammarError unless `schema` is a JSON schema that xgrammar can enforce (no tokenizer
    needed: cheap enough for the API process to answer 400 up front)."""
    try:
        import jsonschema

        jsonschema.validators.validator_for(schema).check_schema(schema)
        schema_ebnf(schema)
    except Exception as e:  # noqa: BLE001 - jsonschema and xgrammar raise various types
        msg = getattr(e, "message", None) or str(e)
        raise GrammarError(f"unsupported JSON schema: {msg}") from None


def _schemas_to_grammars(node: Any) -> Any:
    """Inside a structural tag, every json_schema content becomes its tightened EBNF."""
    if isinstance(node, dict):
        if node.get("type") == "json_schema":
            return {"type": "grammar", "grammar": schema_ebnf(node["json_schema"])}
        return {k: _schemas_to_grammars(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_schemas_to_grammars(v) for v in node]
    return node


class GrammarCompilerPool:
    """Everything, the tokenizer's vocabulary scan included, runs on the pool's threads."""

    def __init__(self, model_dir: str | Path, vocab_size: int, stop_ids: tuple[int, ...],
                 workers: int = 2) -> None:
        self.vocab_size = vocab_size
        self.never: frozenset[int] = frozenset()  # special ids outside every grammar; set below
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="grammar")
        self._compiler = self._pool.submit(self._make_compiler, model_dir, stop_ids, workers)
        self._cache: dict[GrammarSpec, Future[Any]] = {}
        self._lock = threading.Lock()

    def _make_compiler(self, model_dir: str | Path, stop_ids: tuple[int, ...],
                       workers: int) -> Any:
        import xgrammar as xgr
        from transformers import PreTrainedTokenizerFast

        hf = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
        info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=self.vocab_size,
                                                  stop_token_ids=list(stop_ids))
        self.never = frozenset(info.special_token_ids) - frozenset(info.stop_token_ids)
        return xgr.GrammarCompiler(info, max_threads=workers)

    def submit(self, spec: GrammarSpec) -> Future[Any]:
        """The compiled grammar for `spec`, shared by every request that asks for it. A failed
        compile is not cached (its error may be transient, e.g. memory)."""
        with self._lock:
            fut = self._cache.get(spec)
            if fut is None or (fut.done() and fut.exception() is not None):
                fut = self._cache[spec] = self._pool.submit(self.compile, spec)
            return fut

    def compile(self, spec: GrammarSpec) -> Any:
        compiler = self._compiler.result()
        try:
            if spec.kind is GrammarKind.JSON_OBJECT:
                return compiler.compile_grammar(schema_ebnf({"type": "object"}))
            if spec.kind is GrammarKind.JSON_SCHEMA:
                return compiler.compile_grammar(schema_ebnf(spec.spec))
            if spec.kind is GrammarKind.STRUCTURAL_TAG:
                tag = _schemas_to_grammars(json.loads(spec.spec))
                return compiler.compile_structural_tag(json.dumps(tag))
        except Exception as e:  # noqa: BLE001 - xgrammar raises several types for bad specs
            raise GrammarError(f"invalid {spec.kind.value}: {e}") from None
        raise GrammarError(f"unknown grammar kind {spec.kind!r}")
