"""The engine in its own process, so HTTP, tokenization and detokenization never stall the step
loop. Two one-way pipes carry the host loop's typed messages (`server.engine.host`); the
process exits with the host's status (non-zero once a multi-rank engine broke)."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import signal
import sys
import threading
from multiprocessing.connection import Connection

from server.config import EngineConfig
from server.core import GenerateRequest
from server.engine.host import (
    AbortRequest,
    AddRequest,
    EngineStartError,
    Failed,
    Inbound,
    OnStep,
    Outputs,
    Ready,
    Shutdown,
    StartFailed,
    run_host,
)

log = logging.getLogger(__name__)


def _engine_main(cfg: EngineConfig, inbox: Connection, outbox: Connection) -> None:
    from server.engine.engine import Engine

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the API process drains, then sends Shutdown
    sys.exit(run_host(lambda: Engine(cfg, owns_process=True), inbox, outbox.send))


class EngineProcess:
    """Parent-side handle. `on_step` runs on a reader thread for every `Outputs` message."""

    def __init__(self, cfg: EngineConfig, on_step: OnStep, start_timeout: float = 600) -> None:
        ctx = mp.get_context("spawn")
        in_r, self._inbox = ctx.Pipe(duplex=False)
        self._outbox, out_w = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_engine_main, args=(cfg, in_r, out_w), daemon=True,
                                name="unmask-engine")
        self.proc.start()
        in_r.close()
        out_w.close()
        self.failed: str | None = None
        if not self._outbox.poll(start_timeout):
            self.proc.kill()
            raise EngineStartError("the engine process did not start in time")
        try:
            first: Ready | StartFailed = self._outbox.recv()
        except EOFError:
            raise EngineStartError("the engine process died during start-up") from None
        if isinstance(first, StartFailed):
            self.proc.join(5)
            raise EngineStartError(first.error)
        self.info = first.info
        self._on_step = on_step
        self._send_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="engine-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                msg = self._outbox.recv()
            except (EOFError, OSError):
                return
            if isinstance(msg, Outputs):
                self._on_step(msg.outputs, msg.stats)
            elif isinstance(msg, Failed):
                log.error("the engine failed: %s", msg.error)
                self.failed = msg.error

    def _send(self, msg: Inbound) -> None:
        with self._send_lock:
            self._inbox.send(msg)

    def add_request(self, req: GenerateRequest) -> None:
        self._send(AddRequest(req))

    def abort(self, rid: str) -> None:
        self._send(AbortRequest(rid))

    def is_alive(self) -> bool:
        return self.proc.is_alive() and self.failed is None

    def shutdown(self, timeout: float = 30) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self._send(Shutdown())
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self._reader.join(1)
