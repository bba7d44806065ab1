"""A tensor-parallel rank > 0 (`python -m server.distributed.worker`): reads its `RankArgs` (one
JSON line on stdin), plans from the same flags as rank 0, joins the group, builds its runner
with `build_runner` like every rank, then runs every forward rank 0 publishes until told to
stop. It exits non-zero when anything fails, when its peer ranks go (gloo reports the closed
connection) and when the process that started it does (end-of-file on stdin)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import traceback

import torch

from server.config import EngineConfig
from server.distributed.group import RankArgs, join_group, leave_group
from server.runner.builder import build_runner
from server.runner.model_runner import ModelRunner
from server.startup import plan_startup

log = logging.getLogger("server.distributed.worker")  # also when run as __main__


def serve_rank(args: RankArgs) -> None:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    cfg = EngineConfig.from_json(args.config)
    plan = plan_startup(cfg)
    tp, channel = join_group(args, plan)
    runner = build_runner(cfg, plan, tp, device)
    assert isinstance(runner, ModelRunner)  # no graph wrapper under tensor parallelism
    log.info("tensor-parallel rank %d/%d ready on %s", args.rank, args.world_size, device)
    while (fb := channel.recv()) is not None:
        runner.run(fb.to(device))  # K/V into this rank's pages; collectives inside
    leave_group()


def _exit_with_parent() -> None:
    while os.read(0, 4096):  # raw reads (no buffer lock held at shutdown) until end-of-file
        pass
    os._exit(1)  # the process that started this rank is gone


def main() -> None:
    logging.basicConfig(level=os.environ.get("UNMASK_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: rank 0 stops it
    line = b""
    while not line.endswith(b"\n"):  # unbuffered: what follows on stdin is only end-of-file
        chunk = os.read(0, 1)
        if not chunk:
            sys.exit(1)
        line += chunk
    args = RankArgs.from_json(line.decode())
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    try:
        serve_rank(args)
    except BaseException:  # noqa: BLE001 - logged; the group is broken, this rank exits
        log.error("tensor-parallel rank %d failed:\n%s", args.rank, traceback.format_exc())
        os._exit(1)  # no teardown: collectives of a broken group may block
    os._exit(0)


if __name__ == "__main__":
    main()
