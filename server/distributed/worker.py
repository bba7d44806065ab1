"""A tensor-parallel rank > 0: builds its shard of the model and KV pages, then runs every
forward rank 0 sends it (`python -m server.distributed.worker`). Its first stdin message says how
rank 0 reaches it: a `RankSpec` (a local rank of rank 0's node: control stays on stdin/stdout)
or a `Join` (a rank of another node, started by `server.distributed.node`: control moves to a
TCP connection to rank 0, and end-of-file on stdin means that node process died)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

import torch

from server.runner.forward_batch import ForwardBatch

log = logging.getLogger("server.distributed.worker")  # also when run as __main__
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class RankSpec:
    """Everything a rank needs to build its part of the engine (sent pickled)."""

    model_dir: str
    rank: int
    world_size: int
    store_host: str
    store_port: int
    backend: str  # torch.distributed backend: gloo (cpu) | nccl (cuda)
    device: str  # this rank's device, e.g. cpu or cuda:1
    dtype: str  # float32 | bfloat16 | float16
    max_positions: int
    page_size: int
    attn_block: int
    attention_backend: str
    moe_backend: str
    cpu_threads: int | None
    timeout_s: float
    hf_overrides: dict | None = None  # config.json keys replaced (the engine's --hf-overrides)


@dataclass(frozen=True)
class Join:
    """A rank of node k > 0: connect to rank 0's control port, then get its `RankSpec`."""

    host: str
    port: int
    rank: int
    model_dir: str  # this node's copy of the checkpoint
    timeout_s: float


def fb_to(fb: ForwardBatch, device: torch.device) -> ForwardBatch:
    """The device tensors of a CPU-built ForwardBatch moved to `device` (host fields stay)."""
    if device.type == "cpu":
        return fb
    moved = {f: getattr(fb, f).to(device, non_blocking=True)
             for f in ("input_ids", "positions", "slot_mapping", "page_table", "logits_indices")}
    return dataclasses.replace(fb, **moved)


def init_group(spec: RankSpec, store: Any) -> None:
    import torch.distributed as dist

    dist.init_process_group(spec.backend, store=store, rank=spec.rank,
                            world_size=spec.world_size, timeout=timedelta(seconds=spec.timeout_s))


def _send(outbox: BinaryIO, msg: Any) -> None:
    pickle.dump(msg, outbox, protocol=pickle.HIGHEST_PROTOCOL)
    outbox.flush()


def _serve(spec: RankSpec, inbox: BinaryIO, outbox: BinaryIO) -> None:
    import torch.distributed as dist

    from server.model.config import ModelConfig
    from server.model.loader import load_model
    from server.model.moe import set_moe_backend
    from server.model.parallel import TPGroup
    from server.runner.attention import KVCache, create_backend
    from server.runner.model_runner import ModelRunner

    device = torch.device(spec.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif spec.cpu_threads:
        torch.set_num_threads(spec.cpu_threads)
    store = dist.TCPStore(spec.store_host, spec.store_port, spec.world_size, is_master=False,
                          timeout=timedelta(seconds=spec.timeout_s))
    _send(outbox, ("hello", None))
    init_group(spec, store)
    model_dir = Path(spec.model_dir)
    mcfg = ModelConfig.from_file(model_dir / "config.json", spec.hf_overrides)
    dtype = DTYPES[spec.dtype]
    tp = TPGroup(spec.rank, spec.world_size)
    model = load_model(model_dir, mcfg, dtype, device, spec.max_positions, tp)
    set_moe_backend(model, spec.moe_backend, device.type)
    kind, num_pages = pickle.load(inbox)
    assert kind == "pages", kind
    kv = KVCache(mcfg.num_hidden_layers, num_pages, spec.page_size,
                 mcfg.num_key_value_heads // tp.size, mcfg.head_dim, dtype, device)
    runner = ModelRunner(model, kv, create_backend(spec.attention_backend, device),
                         spec.attn_block, device)
    _send(outbox, ("ready", None))
    log.info("tensor-parallel rank %d/%d ready on %s", spec.rank, spec.world_size, device)
    while True:
        try:
            kind, payload = pickle.load(inbox)
        except EOFError:  # rank 0 is gone
            break
        if kind == "stop":
            break
        runner.hidden(fb_to(payload, device))  # K/V into this rank's pages; collectives inside
    dist.destroy_process_group()


def _connect(join: Join) -> tuple[RankSpec, BinaryIO, BinaryIO]:
    """Connect to rank 0 (retrying until it listens), say which rank this is, get the spec."""
    deadline = time.monotonic() + join.timeout_s
    while True:
        try:
            sock = socket.create_connection((join.host, join.port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    inbox, outbox = sock.makefile("rb"), sock.makefile("wb")
    _send(outbox, ("join", join.rank))
    spec: RankSpec = pickle.load(inbox)
    log.info("tensor-parallel rank %d joined rank 0 at %s:%d", join.rank, join.host, join.port)
    return dataclasses.replace(spec, model_dir=join.model_dir), inbox, outbox


def _exit_with_parent() -> None:
    while os.read(0, 4096):  # raw reads (no buffer lock held at shutdown) until end-of-file
        pass
    os._exit(1)  # the node process is gone


def main() -> None:
    # stdout carries pickled messages only: anything printed goes to stderr instead
    outbox = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inbox = sys.stdin.buffer
    logging.basicConfig(level=os.environ.get("UNMASK_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    first: RankSpec | Join = pickle.load(inbox)
    if isinstance(first, Join):
        threading.Thread(target=_exit_with_parent, daemon=True).start()
        try:
            spec, inbox, outbox = _connect(first)
        except (OSError, EOFError) as e:
            log.error("tensor-parallel rank %d: cannot reach rank 0 at %s:%d: %s",
                      first.rank, first.host, first.port, e)
            sys.exit(1)
    else:
        spec = first
    try:
        _serve(spec, inbox, outbox)
    except Exception as e:  # noqa: BLE001 - reported to rank 0, then this rank exits
        log.error("tensor-parallel rank %d failed:\n%s", spec.rank, traceback.format_exc())
        with contextlib.suppress(OSError):
            _send(outbox, ("error", f"rank {spec.rank}: {type(e).__name__}: {e}"))
        sys.exit(1)


if __name__ == "__main__":  # run the imported module's main: one class for Join/RankSpec
    from server.distributed.worker import main as module_main

    module_main()
