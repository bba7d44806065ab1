"""The engine's host loop, one for both homes: a thread of this process (`EngineThread`: tests,
offline use) and the engine process (`server.engine.process`). Typed messages cross the
boundary: requests in (`AddRequest`, `AbortRequest`, `Shutdown`), results out (`Ready`,
`StartFailed`, `Outputs`, `Failed`).

A failure inside a step of a single-process engine is isolated to its request (`Engine.step`);
any other failure fails the live requests and the loop goes on. A multi-rank engine cannot
retry (the other ranks are mid-collective): it fails every request, reports `Failed`, stops
its ranks and the host exits non-zero."""

from __future__ import annotations

import logging
import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from server.core import EngineOutput, FinishReason, GenerateRequest, StepStats

if TYPE_CHECKING:
    from server.engine.engine import Engine, EngineInfo, InFlight

log = logging.getLogger(__name__)
TICK_S = 1.0  # a multi-rank engine's idle tick (keep-alive, rank watch)


class EngineStartError(RuntimeError):
    """The engine could not start; the message is its start-up error."""


@dataclass(frozen=True)
class AddRequest:
    req: GenerateRequest


@dataclass(frozen=True)
class AbortRequest:
    rid: str


@dataclass(frozen=True)
class Shutdown:
    pass


@dataclass(frozen=True)
class Ready:
    info: EngineInfo


@dataclass(frozen=True)
class StartFailed:
    error: str


@dataclass(frozen=True)
class Outputs:
    outputs: list[EngineOutput]
    stats: StepStats | None  # None: after a failure (no step statistics)


@dataclass(frozen=True)
class Failed:
    """The engine is broken for good (a rank failed); the host exits after this."""

    error: str


Inbound = AddRequest | AbortRequest | Shutdown
Outbound = Ready | StartFailed | Outputs | Failed
Emit = Callable[[Outbound], None]


class Inbox(Protocol):
    """A `multiprocessing.connection.Connection`, or `LocalInbox` for a thread."""

    def poll(self, timeout: float | None = ...) -> bool: ...

    def recv(self) -> Inbound: ...


class LocalInbox:
    def __init__(self) -> None:
        self._items: deque[Inbound] = deque()
        self._cv = threading.Condition()

    def send(self, msg: Inbound) -> None:
        with self._cv:
            self._items.append(msg)
            self._cv.notify()

    def poll(self, timeout: float | None = 0.0) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: bool(self._items), timeout)

    def recv(self) -> Inbound:
        with self._cv:
            self._cv.wait_for(lambda: bool(self._items))
            return self._items.popleft()


def run_host(make_engine: Callable[[], Engine], inbox: Inbox, emit: Emit) -> int:
    """Build the engine, serve `inbox` until `Shutdown` (or the inbox closes: its sender is
    gone); the exit status (1: broken)."""
    try:
        engine = make_engine()
    except BaseException as e:  # reported; the handle raises it
        log.exception("engine start-up failed")
        emit(StartFailed(f"{type(e).__name__}: {e}"))
        if not isinstance(e, Exception):
            raise
        return 1
    emit(Ready(engine.info))
    try:
        return _serve(engine, inbox, emit)
    except BaseException:  # e.g. the results pipe broke: stop the ranks, then go
        engine.close(failed=True)
        raise


def _serve(engine: Engine, inbox: Inbox, emit: Emit) -> int:
    """Each turn: take messages, complete the step in flight, begin the next one, then emit
    the completed step's outputs; so emitting them and taking the next messages overlap the
    next step's device work. (Step n+1's scheduling cannot overlap step n: which blocks
    finished, and so what step n+1 forwards, is what step n's read says.)"""
    idle_wait = TICK_S if engine.world_size > 1 else None
    flight: InFlight | None = None
    while True:
        try:
            msgs = _receive(inbox, 0 if flight is not None or engine.has_work() else idle_wait)
        except (EOFError, OSError):  # the sending side is gone: nobody waits for results
            engine.close()
            return 0
        for msg in msgs:
            if isinstance(msg, Shutdown):
                engine.close()
                return 0
            if (out := _handle(engine, msg)) is not None:
                emit(Outputs([out], engine.snapshot()))
        try:
            engine.tick()
            done, flight = (engine.complete(flight) if flight is not None else None), None
            try:
                if engine.has_work():
                    flight = engine.begin()
            finally:  # a failing begin must not lose the completed step's (final) outputs
                if done is not None:
                    emit(Outputs(done.outputs, done.stats))
        except Exception:  # noqa: BLE001 - see the module docstring
            flight = None
            err = traceback.format_exc()
            log.error("engine step failed:\n%s", err)
            if engine.world_size > 1:
                reason = "internal engine error: a tensor-parallel rank failed"
                emit(Outputs(engine.fail_all(reason), None))
                emit(Failed(err.strip().splitlines()[-1]))
                engine.close(failed=True)
                return 1
            emit(Outputs(engine.fail_all("internal engine error"), None))


def _receive(inbox: Inbox, timeout: float | None) -> list[Inbound]:
    """Everything waiting in `inbox`, after waiting up to `timeout` (None: for ever) for one."""
    msgs: list[Inbound] = []
    if inbox.poll(timeout):
        msgs.append(inbox.recv())
        while inbox.poll(0):
            msgs.append(inbox.recv())
    return msgs


def _handle(engine: Engine, msg: AddRequest | AbortRequest) -> EngineOutput | None:
    """Never raises: a message's failure is that request's alone (no collective is involved)."""
    if isinstance(msg, AddRequest):
        try:
            engine.add_request(msg.req)
        except ValueError as e:  # add_request's contract: the request's fault, nothing queued
            return EngineOutput(msg.req.rid, [], True, FinishReason.ERROR, str(e),
                                bad_request=True)
        except Exception:  # noqa: BLE001 - logged; the request fails, the engine goes on
            log.exception("adding request %s failed", msg.req.rid)
            return EngineOutput(msg.req.rid, [], True, FinishReason.ERROR,
                                "internal engine error")
        return None
    try:
        return engine.abort(msg.rid)
    except Exception:  # noqa: BLE001
        log.exception("aborting request %s failed", msg.rid)
        return None


OnStep = Callable[[list[EngineOutput], StepStats | None], None]


class EngineThread:
    """The engine stepping on a thread of this process. `on_step` runs on that thread."""

    def __init__(self, make_engine: Callable[[], Engine], on_step: OnStep) -> None:
        self._inbox = LocalInbox()
        self._on_step = on_step
        self.failed: str | None = None
        started: list[Ready | StartFailed] = []
        ready = threading.Event()

        def emit(msg: Outbound) -> None:
            if isinstance(msg, Ready | StartFailed):
                started.append(msg)
                ready.set()
            elif isinstance(msg, Outputs):
                self._on_step(msg.outputs, msg.stats)
            else:
                self.failed = msg.error

        self._thread = threading.Thread(target=run_host, args=(make_engine, self._inbox, emit),
                                        name="engine", daemon=True)
        self._thread.start()
        ready.wait()
        first = started[0]
        if isinstance(first, StartFailed):
            self._thread.join()
            raise EngineStartError(first.error)
        self.info = first.info

    def add_request(self, req: GenerateRequest) -> None:
        self._inbox.send(AddRequest(req))

    def abort(self, rid: str) -> None:
        self._inbox.send(AbortRequest(rid))

    def is_alive(self) -> bool:
        return self._thread.is_alive() and self.failed is None

    def shutdown(self, timeout: float = 10) -> None:
        self._inbox.send(Shutdown())
        self._thread.join(timeout)
