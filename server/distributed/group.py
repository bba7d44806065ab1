"""Joining the tensor-parallel group through torch.distributed's own rendezvous stores: on one
node a `FileStore` in a private temporary directory (no network listener), across nodes a
`TCPStore` that rank 0 hosts on `--dist-init-addr`; `init_process_group` does the rest. The
store exchanges only torch's own rendezvous keys; nothing unmask sends over it or over the
group is ever unpickled.

Two groups over the same ranks: the default group carries the forward's collectives (NCCL on
GPUs, gloo on CPUs); a gloo group carries control (`StepChannel`) and host-side agreements."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from server.distributed.control import StepChannel
from server.model.parallel import TPGroup
from server.startup import StartupPlan

log = logging.getLogger(__name__)
JOIN_TIMEOUT_S = 600.0  # every rank must reach the store and join within this
COLLECTIVE_TIMEOUT_S = 600.0  # one collective of a forward
CONTROL_TIMEOUT_S = 86400.0  # a rank waiting for rank 0's next message (idle engines wait)


@dataclass(frozen=True)
class RankArgs:
    """Where a rank sits and how it reaches the group (sent to a local rank as JSON)."""

    rank: int
    world_size: int
    store: str  # file:///private/dir/store (one node) or tcp://HOST:PORT (rank 0's TCPStore)
    device: str  # this rank's device, e.g. cpu or cuda:1
    cpu_threads: int | None  # torch intra-op threads on a CPU rank
    config: str  # the EngineConfig (JSON) this rank plans from

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RankArgs:
        return cls(**json.loads(text))


def fingerprint(plan: StartupPlan, world_size: int) -> int:
    """A hash of everything every rank must agree on: the checkpoint's configuration and
    special ids, dtype, context length, block and page size, group size. Ranks planning
    differently refuse to start."""
    what = json.dumps([asdict(plan.mcfg), asdict(plan.specials), str(plan.dtype),
                       plan.max_model_len, plan.block_size, plan.page_size, world_size],
                      sort_keys=True, default=str)
    return int.from_bytes(hashlib.blake2b(what.encode(), digest_size=7).digest(), "little")


def open_store(url: str, world_size: int, host: bool = False) -> dist.Store:
    """The group's store: `file://PATH`, or `tcp://HOST:PORT` (`host`: rank 0 serves it)."""
    if url.startswith("file://"):
        return dist.FileStore(url.removeprefix("file://"), world_size)
    host_name, _, port = url.removeprefix("tcp://").rpartition(":")
    return dist.TCPStore(host_name, int(port), world_size, is_master=host,
                         wait_for_workers=False, timeout=timedelta(seconds=JOIN_TIMEOUT_S))


def join_group(args: RankArgs, plan: StartupPlan,
               store: dist.Store | None = None) -> tuple[TPGroup, StepChannel]:
    """Join (rank 0 passes the store it hosts); ValueError when the ranks' plans differ."""
    if store is None:
        store = open_store(args.store, args.world_size)
    backend = "nccl" if args.device.startswith("cuda") else "gloo"
    dist.init_process_group(backend, store=store, rank=args.rank, world_size=args.world_size,
                            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    control = dist.new_group(backend="gloo", timeout=timedelta(seconds=CONTROL_TIMEOUT_S))
    mine = torch.tensor([fingerprint(plan, args.world_size)], dtype=torch.long)
    every = [torch.empty_like(mine) for _ in range(args.world_size)]
    dist.all_gather(every, mine, group=control)
    odd = [r for r, f in enumerate(every) if int(f) != int(mine)]
    if odd:
        raise ValueError(f"tensor-parallel rank(s) {odd} planned a different model, dtype, "
                         f"context length or page size than rank {args.rank}: every node must "
                         "serve the same checkpoint with the same flags")
    log.info("tensor-parallel rank %d/%d joined (%s)", args.rank, args.world_size, backend)
    tp = TPGroup(args.rank, args.world_size, group=None, cpu_group=control)
    return tp, StepChannel(control, args.rank)


def leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
