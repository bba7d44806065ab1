"""`AsyncEngine`: the asyncio face of the engine for the API process. Requests go to the engine
(its own process by default, a thread in-process for tests); each request's `EngineOutput`s come
back on its own queue. A consumer that stops listening (client gone) aborts its request."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from server.config import EngineConfig
from server.core import EngineOutput, FinishReason, GenerateRequest, StepStats

log = logging.getLogger(__name__)

OnStats = Callable[[StepStats], None]


class EngineDeadError(RuntimeError):
    pass


class _ThreadEngine:
    """The engine stepping on a thread of this process (tests, offline use)."""

    def __init__(self, cfg: EngineConfig, on_step: Callable[[list[EngineOutput],
                                                             StepStats | None], None]) -> None:
        from server.engine.engine import Engine

        self.engine = Engine(cfg)
        self.info = self.engine.info
        self._on_step = on_step
        self._inbox: list[tuple[str, Any]] = []
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        from server.engine.process import _handle

        while True:
            with self._cv:
                while not self._inbox and not self.engine.has_work() and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                msgs, self._inbox = self._inbox, []
            outs = [o for kind, p in msgs if (o := _handle(self.engine, kind, p)) is not None]
            if outs:
                self._on_step(outs, self.engine.snapshot())
            if self.engine.has_work():
                try:
                    result = self.engine.step()
                except Exception:  # noqa: BLE001 - outside forward/accept (isolated in step): fail all
                    log.exception("engine step failed")
                    self._on_step(self.engine.fail_all("internal engine error"), None)
                    continue
                self._on_step(result.outputs, result.stats)

    def _post(self, kind: str, payload: Any) -> None:
        with self._cv:
            self._inbox.append((kind, payload))
            self._cv.notify()

    def add_request(self, req: GenerateRequest) -> None:
        self._post("add", req)

    def abort(self, rid: str) -> None:
        self._post("abort", rid)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def shutdown(self, timeout: float = 10) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout)


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
                self.backend = _ThreadEngine(self.cfg, self._on_step)
            else:
                from server.engine.process import EngineProcess

                cfg = self.cfg
                if cfg.cpu_threads is None:  # leave a core to this (API) process
                    cfg = dataclasses.replace(cfg, cpu_threads=max(1, (os.cpu_count() or 1) - 1))
                self.backend = EngineProcess(cfg, self._on_step)
            self.info = self.backend.info
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
