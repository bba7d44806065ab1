"""The step's traffic between host and device, in one place.

`upload` stages host values in pinned memory and copies them asynchronously: it never waits for
the GPU work already queued (a copy from pageable memory would). `read` is the blocking
device→host copy, a round trip that drains the queue; every one the engine makes goes through
it and is counted in `ROUND_TRIPS`. A step of plain rows (no log-probabilities, canvas frames,
grammars or LLaDA2.2 edits) makes exactly one (tests/unit/test_step_layout.py); each of those
features adds one read of its own."""

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


def read(t: torch.Tensor) -> Any:
    """`t.tolist()`: the counted round trip."""
    ROUND_TRIPS.count += 1
    return t.tolist()
