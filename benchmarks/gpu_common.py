"""Shared by the GPU benchmarks: timing with CUDA events, measured HBM copy bandwidth and bf16
matmul peak (the roofline's two ceilings), and the device/date/command header of a result."""

from __future__ import annotations

import datetime
import json
import platform
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def cuda_time(fn: Callable[[], Any], iters: int = 50, warmup: int = 5) -> float:
    """Median seconds per call, CUDA-event timed (the GPU's time, launch overhead included)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    times.sort()
    return times[len(times) // 2]


def copy_bandwidth(nbytes: int = 2 << 30) -> float:
    """Bytes/s of a device-to-device copy, counting read + write (what a streaming kernel can
    reach on this device)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = cuda_time(lambda: dst.copy_(src), iters=20)
    return 2 * nbytes / t


def bf16_peak(n: int = 8192) -> float:
    """FLOP/s of a large square bf16 matmul (measured, not the datasheet)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t = cuda_time(lambda: a @ b, iters=20)
    return 2 * n**3 / t


def header() -> dict[str, Any]:
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"command": " ".join(shlex.quote(a) for a in sys.argv), "device": dev,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "torch": torch.__version__, "host": platform.node()}


def write(out: str | None, result: dict[str, Any]) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
