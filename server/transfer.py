"""The step's traffic between host and device, in one place.

`upload` stages host values in pinned memory and copies them asynchronously: it never waits for
the GPU work already queued (a copy from pageable memory would). `read` is the blocking
device→host copy, a round trip that drains the queue; every one the engine makes goes through
it and is counted in `ROUND_TRIPS`. `read_later` queues the same copy into pinned memory and
returns at once; its `wait` is the round trip, so the host can do other work (emit the last
step's outputs, take new requests) while the GPU finishes the step. A step of plain rows (no
log-probabilities, canvas frames, grammars or LLaDA2.2 edits) makes exactly one
(tests/unit/test_step_layout.py); each of those features adds one read of its own."""

from __future__ import annotations

from typing import Any

import torch


class RoundTrips:
    """A process-wide count of `read`s (tests take differences around a step)."""

    def __init__(self) -> None:
        self.count = 0


ROUND_TRIPS = RoundTrips()


def upload(values: Any, dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
    """`values` (nested lists, or a CPU tensor) as a tensor on `device`, without a sync."""
    t = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class PendingRead:
    """A device→host copy in flight; `wait()` blocks until it lands (the counted round trip)."""

    def __init__(self, t: torch.Tensor) -> None:
        self._event: torch.cuda.Event | None = None
        self._host = t
        if t.device.type == "cuda":
            self._host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            self._host.copy_(t, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(t.device))  # the copy's stream

    def wait(self) -> Any:
        ROUND_TRIPS.count += 1
        if self._event is not None:
            self._event.synchronize()
        return self._host.tolist()


def read_later(t: torch.Tensor) -> PendingRead:
    """Start reading `t` (the queue goes on); `.wait()` gives `t.tolist()`."""
    return PendingRead(t)


def read(t: torch.Tensor) -> Any:
    """`t.tolist()`: the counted round trip."""
    return PendingRead(t).wait()
