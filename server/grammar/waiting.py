"""`GrammarWaitingRoom`: requests whose grammar is still compiling. They hold no pages and are
not scheduled; each enters the scheduler's queue the step after its grammar is ready, so a slow
compile delays only its own request."""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

from server.core import EngineOutput, FinishReason, GrammarSpec, Sequence
from server.grammar.compiler import GrammarCompilerPool, GrammarError
from server.grammar.matcher import GrammarState


class GrammarWaitingRoom:
    def __init__(self, model_dir: str | Path, vocab_size: int, stop_ids: tuple[int, ...]) -> None:
        self._args = (model_dir, vocab_size, stop_ids)
        self._pool: GrammarCompilerPool | None = None  # created by the first grammar request
        self._seqs: dict[str, tuple[Sequence, Future[Any]]] = {}

    @property
    def pool(self) -> GrammarCompilerPool:
        if self._pool is None:
            self._pool = GrammarCompilerPool(*self._args)
        return self._pool

    def __len__(self) -> int:
        return len(self._seqs)

    def __contains__(self, rid: str) -> bool:
        return rid in self._seqs

    def add(self, seq: Sequence, spec: GrammarSpec) -> None:
        self._seqs[seq.rid] = (seq, self.pool.submit(spec))

    def ready(self) -> tuple[list[Sequence], list[EngineOutput]]:
        """Sequences whose grammar compiled (matcher attached), and failures as outputs."""
        seqs, failed = [], []
        for rid, (seq, fut) in list(self._seqs.items()):
            if not fut.done():
                continue
            del self._seqs[rid]
            try:
                seq.grammar = GrammarState(fut.result(), self.pool.vocab_size, self.pool.never)
            except Exception as e:  # noqa: BLE001 - the request fails, the engine goes on
                failed.append(EngineOutput(rid, [], True, FinishReason.ERROR, str(e),
                                           bad_request=isinstance(e, GrammarError)))
                continue
            seqs.append(seq)
        return seqs, failed

    def wait(self, timeout: float) -> None:
        """Block until some grammar is ready (or `timeout`): only when nothing else can run."""
        wait([f for _, f in self._seqs.values()], timeout, FIRST_COMPLETED)

    def abort(self, rid: str, reason: FinishReason = FinishReason.ABORT,
              error: str | None = None) -> EngineOutput | None:
        entry = self._seqs.pop(rid, None)
        return None if entry is None else EngineOutput(rid, [], True, reason, error)

    def rids(self) -> list[str]:
        return list(self._seqs)
