"""`AsyncEngine`: the asyncio face of the engine for the API process. Requests go to the engine
(its own process by default, a thread in-process for tests; one host loop,
`server.engine.host`, in either); each request's `EngineOutput`s come
back on its own queue. A consumer that stops listening (client gone) aborts its request."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from server.config import EngineConfig
from server.core import EngineOutput, FinishReason, GenerateRequest, StepStats
from server.engine.host import EngineStartError

log = logging.getLogger(__name__)

OnStats = Callable[[StepStats], None]


class EngineDeadError(RuntimeError):
    pass


class AsyncEngine:
    def __init__(self, cfg: EngineConfig, in_process: bool = False,
                 on_stats: OnStats | None = None) -> None:
        self.cfg = cfg
        self.in_process = in_process
        self.on_stats = on_stats
        self.backend: Any = None
        self.info: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queues: dict[str, asyncio.Queue[EngineOutput]] = {}
        self.start_error: str | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Blocking: load the model (call from a worker thread while the server listens)."""
        self.loop = loop
        try:
            if self.in_process:
                from server.engine.engine import Engine
                from server.engine.host import EngineThread

                cfg = self.cfg
                self.backend = EngineThread(lambda: Engine(cfg), self._on_step)
            else:
                from server.engine.process import EngineProcess

                cfg = self.cfg
                if cfg.cpu_threads is None:  # leave a core to this (API) process
                    cfg = dataclasses.replace(cfg, cpu_threads=max(1, (os.cpu_count() or 1) - 1))
                self.backend = EngineProcess(cfg, self._on_step)
            self.info = self.backend.info
        except EngineStartError as e:
            self.start_error = str(e)
            raise
        except Exception as e:
            self.start_error = f"{type(e).__name__}: {e}"
            raise

    @property
    def ready(self) -> bool:
        return self.info is not None

    def is_alive(self) -> bool:
        return self.backend is None or self.backend.is_alive()

    # -- engine thread → event loop -------------------------------------------------------
    def _on_step(self, outputs: list[EngineOutput], stats: StepStats | None) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self._dispatch, outputs, stats)

    def _dispatch(self, outputs: list[EngineOutput], stats: StepStats | None) -> None:
        for o in outputs:
            q = self.queues.get(o.rid)
            if q is not None:
                q.put_nowait(o)
        if stats is not None and self.on_stats is not None:
            self.on_stats(stats)

    # -- requests -------------------------------------------------------------------------
    async def generate(self, req: GenerateRequest) -> AsyncIterator[EngineOutput]:
        """Yield the request's outputs until it finishes. Leaving early aborts it."""
        if not self.ready or not self.is_alive():
            raise EngineDeadError("the engine is not running")
        q: asyncio.Queue[EngineOutput] = asyncio.Queue()
        self.queues[req.rid] = q
        finished = False
        try:
            self.backend.add_request(req)
            while True:
                try:
                    out = await asyncio.wait_for(q.get(), timeout=1.0)
                except TimeoutError:
                    if not self.is_alive():
                        raise EngineDeadError("the engine process died") from None
                    continue
                finished = out.finished
                yield out
                if finished:
                    return
        finally:
            self.queues.pop(req.rid, None)
            if not finished and self.backend is not None and self.is_alive():
                self.backend.abort(req.rid)

    def abort(self, rid: str) -> None:
        if self.backend is not None:
            self.backend.abort(rid)

    def abort_all(self) -> None:
        for rid in list(self.queues):
            self.abort(rid)

    @property
    def num_in_flight(self) -> int:
        return len(self.queues)

    def shutdown(self) -> None:
        if self.backend is not None:
            self.backend.shutdown()


def aborted(rid: str) -> EngineOutput:
    return EngineOutput(rid, [], True, FinishReason.ABORT)
