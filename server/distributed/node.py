"""Several nodes (`unmask serve --nnodes N --node-rank K --dist-init-addr HOST:PORT`): the
topology check every node makes, rank 0's control listener, and `run_node`, all that node K > 0
runs: its ranks, and no HTTP API. Node K holds ranks K*L..K*L+L-1 (L = tp / nnodes); they join
the process group at HOST:PORT and take control messages from rank 0 over TCP on PORT + 1."""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

from server.config import EngineConfig
from server.distributed.channel import parse_addr

log = logging.getLogger(__name__)
JOIN_TIMEOUT_S = 600.0  # how long a rank retries rank 0's control port


def check_topology(cfg: EngineConfig) -> int:
    """Ranks per node; ValueError naming the flag when the topology is inconsistent."""
    n, nodes, k = cfg.tensor_parallel_size, cfg.nnodes, cfg.node_rank
    if nodes < 1:
        raise ValueError("--nnodes must be >= 1")
    if not 0 <= k < nodes:
        raise ValueError(f"--node-rank {k} must be in 0..{nodes - 1} (--nnodes {nodes})")
    if n % nodes:
        raise ValueError(f"--tensor-parallel-size {n} (ranks over all nodes) must be a "
                         f"multiple of --nnodes {nodes}: every node runs the same number")
    if nodes > 1 and not cfg.dist_init_addr:
        raise ValueError("--nnodes > 1 needs --dist-init-addr HOST:PORT (node 0's address)")
    if cfg.dist_init_addr:
        parse_addr(cfg.dist_init_addr)
    return n // nodes


def control_listener(port: int) -> socket.socket:
    """Rank 0's listening socket for the other nodes' ranks (all interfaces)."""
    sock = socket.create_server(("", port), family=socket.AF_INET)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def run_node(cfg: EngineConfig) -> int:
    """Node K > 0: start its ranks, then wait. It exits when they all have (rank 0 gone: each
    reads end-of-file on its socket) or on SIGTERM/SIGINT, which it passes on to them."""
    from server.distributed.worker import Join
    from server.model.loader import resolve_model_path

    stopping = False  # set by SIGTERM/SIGINT, from before any rank starts

    def on_signal(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    per_node = check_topology(cfg)
    if cfg.node_rank == 0:
        raise ValueError("node 0 runs the engine, not run_node")
    assert cfg.dist_init_addr is not None
    host, port = parse_addr(cfg.dist_init_addr)
    model_dir = str(resolve_model_path(cfg.model))
    first = cfg.node_rank * per_node
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs: list[subprocess.Popen] = []
    for rank in range(first, first + per_node):
        p = subprocess.Popen([sys.executable, "-m", "server.distributed.worker"],
                             stdin=subprocess.PIPE, env=env)
        assert p.stdin is not None
        p.stdin.write(pickle.dumps(Join(host, port + 1, rank, model_dir, JOIN_TIMEOUT_S)))
        p.stdin.flush()  # stdin stays open: its end-of-file tells the rank this process died
        procs.append(p)
    log.info("node %d/%d: ranks %d..%d joining %s:%d (no HTTP API on this node)",
             cfg.node_rank, cfg.nnodes, first, first + per_node - 1, host, port)
    while not stopping and any(p.poll() is None for p in procs):
        if any(p.returncode for p in procs if p.poll() is not None):
            break  # one rank failed: the group is broken, stop the others
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    codes = [p.returncode for p in procs]
    log.info("node %d: ranks exited with %s", cfg.node_rank, codes)
    return 0 if stopping or not any(codes) else 1
