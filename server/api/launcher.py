"""Run the app under uvicorn with graceful drain: on SIGTERM/SIGINT `/ready` turns 503 at once,
new requests get 503, in-flight ones get up to `shutdown_timeout` seconds, the rest are aborted,
then the server (and the engine process) exit cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path
from types import FrameType

import uvicorn

from server.api.app import AppState, ServerSettings, create_app

log = logging.getLogger("unmask.api")
ENGINE_DEAD_LINGER_S = 5.0


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: AppState, shutdown_timeout: float) -> None:
        super().__init__(config)
        self.state, self.shutdown_timeout = state, shutdown_timeout
        self._drain_task: asyncio.Task[None] | None = None
        self.engine_died_at: float | None = None  # monotonic time the engine was found dead

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.state.draining:  # a second signal: stop now
            self.force_exit = self.should_exit = True
            return
        log.info("signal %d: draining for up to %.0fs", sig, self.shutdown_timeout)
        self.state.draining = True
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(self._start_drain)

    async def on_tick(self, counter: int) -> bool:
        """Besides uvicorn's own: once a started engine is dead (a rank failed, or the engine
        process exited), in-flight requests get their errors and `/health`, `/ready` and new
        work answer 503 for `ENGINE_DEAD_LINGER_S` (probes and balancers see it), then the
        server exits non-zero so the orchestrator restarts it."""
        if await super().on_tick(counter):
            return True
        engine = self.state.engine
        if engine.ready and not engine.is_alive():
            now = time.monotonic()
            if self.engine_died_at is None:
                log.error("the engine is gone: failing in-flight requests, then exiting")
                self.engine_died_at = now
            waited = now - self.engine_died_at
            return ((waited > ENGINE_DEAD_LINGER_S and not self.state.in_flight)
                    or waited > 3 * ENGINE_DEAD_LINGER_S)
        return False

    def _start_drain(self) -> None:
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_timeout
        while self.state.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.state.engine.num_in_flight:
            log.info("aborting %d requests still in flight", self.state.engine.num_in_flight)
            self.state.engine.abort_all()
            await asyncio.sleep(0.2)
        self.should_exit = True


def default_model_dir() -> Path:
    """The embedded default: the trained checkpoint shipped inside the package (the wheel carries
    it as package data, so every install serves the same model)."""
    from server.checkpoints import LLADA2

    return LLADA2


def serve(settings: ServerSettings, host: str, port: int, shutdown_timeout: float,
          log_level: str = "info") -> int:
    """Run until drained or the engine dies; the exit status (1: the engine died)."""
    app = create_app(settings)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=max(1, int(shutdown_timeout) + 5))
    server = DrainingServer(config, app.state.unmask, shutdown_timeout)
    server.run()
    # uvicorn restores the default handlers; exit 0 after a drain rather than re-raising
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return 1 if server.engine_died_at is not None else 0
