"""Several nodes (`unmask serve --nnodes N --node-rank K --dist-init-addr HOST:PORT`): node
K > 0 runs only its ranks K*L..K*L+L-1 (L = tp / nnodes) and no HTTP API. They plan from this
node's own flags and checkpoint copy, and join the group through rank 0's TCPStore at
HOST:PORT (torch.distributed's rendezvous; they retry until rank 0 listens)."""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

from server.config import EngineConfig
from server.distributed.launch import rank_args
from server.distributed.ranks import RankProcesses
from server.startup import parse_addr, plan_startup

log = logging.getLogger(__name__)


def run_node(cfg: EngineConfig) -> int:
    """Node K > 0: start its ranks, then wait. It exits when they all have (0 when they were
    told to stop, 1 when one failed: the others are stopped) or on SIGTERM/SIGINT, which it
    passes on to them."""
    stopping = False  # set by SIGTERM/SIGINT, from before any rank starts

    def on_signal(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    plan = plan_startup(cfg)
    if cfg.node_rank == 0:
        raise ValueError("node 0 runs the engine, not run_node")
    assert cfg.dist_init_addr is not None
    host, port = parse_addr(cfg.dist_init_addr)
    per_node = plan.ranks_per_node
    first = cfg.node_rank * per_node
    procs = RankProcesses([rank_args(cfg, plan, r, f"tcp://{host}:{port}")
                           for r in range(first, first + per_node)])
    log.info("node %d/%d: ranks %d..%d joining %s:%d (no HTTP API on this node)",
             cfg.node_rank, cfg.nnodes, first, first + per_node - 1, host, port)
    while not stopping and len(gone := procs.exited()) < per_node:
        if any(gone.values()):
            break  # one rank failed: the group is broken, stop the others
        time.sleep(0.2)
    codes = procs.exited()
    procs.kill()
    log.info("node %d: ranks exited with %s", cfg.node_rank, procs.exited())
    return 0 if stopping or (len(codes) == per_node and not any(codes.values())) else 1
