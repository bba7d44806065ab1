"""The ranks one node starts: `python -m server.distributed.worker` subprocesses (plain
subprocesses: the engine process is a daemonic multiprocessing child, which may not start
multiprocessing children). Each gets its `RankArgs` as one JSON line on stdin; stdin then stays
open, and its end-of-file tells the rank that the process which started it is gone."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from server.distributed.group import RankArgs

log = logging.getLogger(__name__)


class RankProcesses:
    def __init__(self, ranks: list[RankArgs]) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False
        for a in ranks:
            p = subprocess.Popen([sys.executable, "-m", "server.distributed.worker"],
                                 stdin=subprocess.PIPE, env=env)
            assert p.stdin is not None
            p.stdin.write(a.to_json().encode() + b"\n")
            p.stdin.flush()
            self.procs[a.rank] = p

    def exited(self) -> dict[int, int]:
        """Rank → exit code of every rank that has exited."""
        return {r: code for r, p in self.procs.items() if (code := p.poll()) is not None}

    def watch(self, on_exit: Callable[[str], None], every_s: float = 0.5) -> None:
        """Call `self.on_exit(reason)` once (`on_exit` until replaced), from a daemon thread,
        if a rank exits while not stopping."""
        self.on_exit = on_exit

        def loop() -> None:
            while not self.stopping:
                if gone := self.exited():
                    if not self.stopping:
                        self.on_exit(", ".join(f"rank {r} exited with code {c}"
                                               for r, c in sorted(gone.items())))
                    return
                time.sleep(every_s)

        threading.Thread(target=loop, name="rank-watch", daemon=True).start()

    def wait(self, timeout: float) -> None:
        """Wait for every rank to exit (after it was told to stop); then terminate, kill."""
        self.stopping = True
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.monotonic()))
        self.kill()

    def kill(self) -> None:
        self.stopping = True
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            if p.stdin is not None:
                with contextlib.suppress(OSError):
                    p.stdin.close()
