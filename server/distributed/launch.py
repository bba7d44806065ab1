"""Rank 0's side of tensor parallelism: set up the group's store, start this node's other ranks,
join, and hand the engine a `RankGroup`. Rank 0 alone schedules, allocates pages (so page ids
agree on every rank) and turns logits into tokens; every rank runs every forward.

Failure semantics: a rank that exits, or a collective that fails, breaks the group for good.
The engine then fails every request and its process exits non-zero (so an orchestrator
restarts the whole group); the other ranks see their peer gone and exit too. A local rank's
exit is noticed within a second even while idle. Where the group owns its process (the engine
process), a last resort ends it `GRACE_S` after a local rank died if the engine has not exited
by then (e.g. blocked in a collective that never returns)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time

import torch

from server.config import EngineConfig
from server.distributed.control import StepChannel
from server.distributed.group import RankArgs, join_group, leave_group, open_store
from server.distributed.ranks import RankProcesses
from server.model.parallel import TPGroup
from server.startup import StartupPlan, parse_addr

log = logging.getLogger(__name__)
GRACE_S = 5.0
KEEPALIVE_S = 1.0  # rank 0 silent this long sends a keep-alive (the control group waits far longer)


def rank_args(cfg: EngineConfig, plan: StartupPlan, rank: int, store: str) -> RankArgs:
    """Every node is assumed alike: rank r uses device (first + r % per_node) of its node,
    where `first` is the index of --device (cuda:K), and CPU ranks share the node's cores."""
    per_node = plan.ranks_per_node
    if plan.device.type == "cuda":
        device, threads = f"cuda:{(plan.device.index or 0) + rank % per_node}", None
    else:
        device = "cpu"
        threads = max(1, (cfg.cpu_threads or os.cpu_count() or 1) // per_node)
    return RankArgs(rank, cfg.tensor_parallel_size, store, device, threads, cfg.to_json())


class RankGroup:
    """Rank 0's handle on the group: its place (`tp`), the step channel, this node's ranks."""

    def __init__(self, tp: TPGroup, channel: StepChannel, procs: RankProcesses,
                 device: torch.device, private: str | None, owns_process: bool) -> None:
        self.tp, self.channel, self.procs, self.device = tp, channel, procs, device
        self.private = private  # the one-node store's directory, removed on close
        self.owns_process = owns_process  # may end the process as a last resort
        self.broken: str | None = None  # why the group is broken, once it is
        self._closed = False
        self._last_resort: threading.Timer | None = None

    def on_rank_exit(self, reason: str) -> None:
        """The watch thread: mark the group broken; in the engine process, end it if the
        engine has not closed the group `GRACE_S` later."""
        self.broken = reason
        log.error("tensor parallel group broken: %s", reason)
        if self.owns_process and not self._closed:
            self._last_resort = threading.Timer(GRACE_S, _last_resort)
            self._last_resort.daemon = True
            self._last_resort.start()

    def check(self) -> None:
        """RuntimeError once the group is broken (a rank gone)."""
        if self.broken is not None:
            raise RuntimeError(f"tensor parallel group broken: {self.broken}")

    def tick(self) -> None:
        """Between steps: raise if broken; keep the other ranks' wait alive."""
        self.check()
        if time.monotonic() - self.channel.last_sent >= KEEPALIVE_S:
            self.channel.send_keepalive()

    def close(self, timeout: float = 10) -> None:
        """Normal stop: tell every rank, wait for this node's, leave the group (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.procs.stopping = True
        if self.broken is None:
            try:
                self.channel.send_stop()
            except Exception:  # noqa: BLE001 - a broken group: the ranks are killed below
                log.exception("could not tell the ranks to stop")
        self.procs.wait(timeout)
        leave_group()
        self._release()

    def abandon(self) -> None:
        """After a failure: kill this node's ranks now (the others see rank 0 gone)."""
        self._closed = True
        self.procs.kill()
        self._release()

    def _release(self) -> None:
        if self._last_resort is not None:
            self._last_resort.cancel()
        if self.private is not None:
            shutil.rmtree(self.private, ignore_errors=True)


def start_group(cfg: EngineConfig, plan: StartupPlan, owns_process: bool = False) -> RankGroup:
    """`owns_process`: this process is the engine's own (it may end itself when the group
    breaks and the engine does not exit; a rank dying during the rendezvous ends it too)."""
    n, per_node = cfg.tensor_parallel_size, plan.ranks_per_node
    device = plan.device
    if device.type == "cuda":
        first = device.index or 0
        if first + per_node > torch.cuda.device_count():
            raise ValueError(f"{per_node} ranks per node need GPUs {first}.."
                             f"{first + per_node - 1}; {torch.cuda.device_count()} visible")
        device = torch.device("cuda", first)
        torch.cuda.set_device(device)
    private: str | None = None
    procs: RankProcesses | None = None
    try:
        if cfg.nnodes == 1:  # nothing listens beyond loopback (unless the user chose otherwise)
            private = tempfile.mkdtemp(prefix="unmask-tp-")  # mode 0700
            url = f"file://{private}/store"
            for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):  # inherited by the ranks
                os.environ.setdefault(var, _loopback())
        else:
            host, port = parse_addr(cfg.dist_init_addr or "")
            url = f"tcp://{host}:{port}"
        store = open_store(url, n, host=True)
        args = [rank_args(cfg, plan, r, url) for r in range(per_node)]
        if args[0].cpu_threads:
            torch.set_num_threads(args[0].cpu_threads)
        procs = RankProcesses(args[1:])
        if owns_process:  # the rendezvous blocks; a local rank gone cannot end it otherwise
            procs.watch(_failed_to_start)
        log.info("tensor parallel: %d ranks on %d node(s); store %s; waiting for ranks 1..%d",
                 n, cfg.nnodes, url, n - 1)
        tp, channel = join_group(args[0], plan, store)
        group = RankGroup(tp, channel, procs, device, private, owns_process)
        if owns_process:
            procs.on_exit = group.on_rank_exit
        else:
            procs.watch(group.on_rank_exit)
        return group
    except BaseException:
        if procs is not None:
            procs.kill()
        leave_group()
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)
        raise


def _loopback() -> str:
    """The loopback interface's name (lo on Linux, lo0 on BSD/macOS)."""
    names = [name for _, name in socket.if_nameindex()]
    return next((n for n in names if n in ("lo", "lo0")), "lo")


def _failed_to_start(reason: str) -> None:
    log.error("tensor parallel start-up failed: %s (see its log above)", reason)
    os._exit(1)


def _last_resort() -> None:
    log.error("engine did not exit %.0fs after the group broke; exiting", GRACE_S)
    os._exit(1)
