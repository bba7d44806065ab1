"""The engine in its own process, so HTTP, tokenization and detokenization never stall the step
loop. Two one-way pipes: requests in (`add`, `abort`, `shutdown`), messages out (`ready`,
`step` with that step's outputs and stats, `error` if start-up failed)."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from server.config import EngineConfig
from server.core import EngineOutput, FinishReason, GenerateRequest, StepStats

log = logging.getLogger(__name__)

OnStep = Callable[[list[EngineOutput], StepStats | None], None]


class EngineStartError(RuntimeError):
    pass


def _engine_main(cfg: EngineConfig, inbox: Connection, outbox: Connection) -> None:
    from server.engine.engine import Engine

    try:
        engine = Engine(cfg)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
        outbox.send(("error", f"{type(e).__name__}: {e}"))
        return
    outbox.send(("ready", engine.info))
    while True:
        wait: float | None = None if not engine.has_work() else 0
        while inbox.poll(wait):
            kind, payload = inbox.recv()
            if kind == "shutdown":
                return
            out = _handle(engine, kind, payload)
            if out is not None:
                outbox.send(("step", [out], engine.snapshot()))
            wait = 0
        if engine.has_work():
            try:
                result = engine.step()
            except Exception:  # noqa: BLE001 - outside forward/accept (isolated in step): fail all
                err = traceback.format_exc()
                log.error("engine step failed:\n%s", err)
                outbox.send(("step", engine.fail_all("internal engine error"), None))
                continue
            outbox.send(("step", result.outputs, result.stats))


def _handle(engine: Any, kind: str, payload: Any) -> EngineOutput | None:
    if kind == "add":
        try:
            engine.add_request(payload)
        except ValueError as e:  # add_request's contract: the request's fault, nothing queued
            return EngineOutput(payload.rid, [], True, FinishReason.ERROR, str(e),
                                bad_request=True)
        return None
    if kind == "abort":
        return engine.abort(payload)
    raise ValueError(f"unknown engine message {kind!r}")


class EngineProcess:
    """Parent-side handle. `on_step` runs on a reader thread for every message with outputs."""

    def __init__(self, cfg: EngineConfig, on_step: OnStep, start_timeout: float = 600) -> None:
        ctx = mp.get_context("spawn")
        in_r, self._inbox = ctx.Pipe(duplex=False)
        self._outbox, out_w = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_engine_main, args=(cfg, in_r, out_w), daemon=True,
                                name="unmask-engine")
        self.proc.start()
        in_r.close(), out_w.close()
        if not self._outbox.poll(start_timeout):
            self.proc.kill()
            raise EngineStartError("the engine process did not start in time")
        try:
            kind, payload = self._outbox.recv()
        except EOFError:
            raise EngineStartError("the engine process died during start-up") from None
        if kind == "error":
            self.proc.join(5)
            raise EngineStartError(payload)
        self.info = payload
        self._on_step = on_step
        self._send_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="engine-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                _, outputs, stats = self._outbox.recv()
            except (EOFError, OSError):
                return
            self._on_step(outputs, stats)

    def _send(self, msg: tuple[str, Any]) -> None:
        with self._send_lock:
            self._inbox.send(msg)

    def add_request(self, req: GenerateRequest) -> None:
        self._send(("add", req))

    def abort(self, rid: str) -> None:
        self._send(("abort", rid))

    def is_alive(self) -> bool:
        return self.proc.is_alive()

    def shutdown(self, timeout: float = 10) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self._send(("shutdown", None))
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self._reader.join(1)
