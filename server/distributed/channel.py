"""Rank 0's handles on the other ranks' processes: pickled messages over their stdin/stdout.
Pipes, not collectives, carry control: an idle server waits without a collective timeout, and a
rank whose parent died sees end-of-file and exits."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from typing import Any, BinaryIO


def send(pipe: BinaryIO, msg: Any) -> None:
    pickle.dump(msg, pipe, protocol=pickle.HIGHEST_PROTOCOL)
    pipe.flush()


class WorkerPool:
    """Ranks 1..n-1, each `python -m server.distributed.worker` (a plain subprocess: the engine
    process is a daemonic multiprocessing child, which may not start multiprocessing children)."""

    def __init__(self, num_workers: int) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.procs = [
            subprocess.Popen([sys.executable, "-m", "server.distributed.worker"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
            for _ in range(num_workers)
        ]

    def send_each(self, msgs: list[Any]) -> None:
        for p, msg in zip(self.procs, msgs, strict=True):
            send(self._stdin(p), msg)

    def broadcast(self, msg: Any) -> None:
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        for p in self.procs:
            pipe = self._stdin(p)
            pipe.write(data)
            pipe.flush()

    def expect(self, kind: str) -> None:
        """Wait for message `kind` from every rank; RuntimeError with a rank's error or death."""
        for rank, p in enumerate(self.procs, start=1):
            assert p.stdout is not None
            try:
                got = pickle.load(p.stdout)
            except EOFError:
                raise RuntimeError(f"tensor-parallel rank {rank} exited (code {p.wait()}) "
                                   f"before {kind!r}; see its log above") from None
            if got[0] != kind:
                detail = got[1] if got[0] == "error" else f"sent {got[0]!r}, not {kind!r}"
                raise RuntimeError(f"tensor-parallel rank {rank}: {detail}")

    def dead(self) -> list[int]:
        return [rank for rank, p in enumerate(self.procs, start=1) if p.poll() is not None]

    def stop(self, timeout: float = 10) -> None:
        for p in self.procs:
            try:
                send(self._stdin(p), ("stop", None))
                self._stdin(p).close()
            except (BrokenPipeError, OSError, ValueError):
                pass
        for p in self.procs:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            if p.stdout is not None:
                p.stdout.close()

    @staticmethod
    def _stdin(p: subprocess.Popen) -> BinaryIO:
        assert p.stdin is not None
        return p.stdin
