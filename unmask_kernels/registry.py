"""A small registry per op: name → "module:attribute", imported only when chosen. Backends are
chosen once, by name or 'auto'.

Nothing heavy (Triton, flashinfer) is imported until a backend is resolved, so a CPU box
imports every module. On a CPU device a Triton backend runs only under `TRITON_INTERPRET=1`
(the interpreter executes the same kernels with numpy; slow, for tests)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

_OPS: dict[str, dict[str, str]] = {}
_ON_DEVICE: dict[tuple[str, str, str], str] = {}  # (op, name, device type) → target


def register(op: str, name: str, target: str, device_type: str | None = None) -> None:
    """`target` is "package.module:attribute". With `device_type`, it replaces the name's
    target on that device only (one name, a device-specific implementation chosen at resolve
    time, so no call branches on the device)."""
    if device_type is None:
        _OPS.setdefault(op, {})[name] = target
    else:
        _ON_DEVICE[(op, name, device_type)] = target


def available(op: str) -> list[str]:
    return sorted(_OPS.get(op, {}))


def triton_usable(device_type: str) -> bool:
    """Triton kernels run on CUDA, or on CPU tensors under the interpreter."""
    if importlib.util.find_spec("triton") is None:
        return False
    return device_type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def resolve(op: str, name: str, device_type: str) -> tuple[str, Any]:
    """(chosen name, implementation). 'auto': triton on CUDA when importable, else torch."""
    if name == "auto":
        name = "triton" if device_type == "cuda" and triton_usable(device_type) else "torch"
    impls = _OPS.get(op, {})
    if name not in impls:
        raise ValueError(f"unknown {op} backend {name!r}; available: {sorted(impls)}")
    if name == "triton" and not triton_usable(device_type):
        raise ValueError(f"{op} backend 'triton' needs CUDA or TRITON_INTERPRET=1 on "
                         f"{device_type} (and the triton package)")
    if name == "grouped" and not hasattr(importlib.import_module("torch"), "_grouped_mm"):
        raise ValueError(f"{op} backend 'grouped' needs a torch with torch._grouped_mm")
    module, attr = _ON_DEVICE.get((op, name, device_type), impls[name]).split(":")
    impl = getattr(importlib.import_module(module), attr)
    log.info("%s backend: %s (%s)", op, name, device_type)
    return name, impl
