"""Rank 0's control links to the other ranks: pickled messages over a local rank's stdin/stdout
pipes, or over a TCP connection from a rank on another node (`--nnodes`). Links, not
collectives, carry control: an idle server waits without a collective timeout, and a rank whose
rank 0 died sees end-of-file and exits."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time
from typing import Any, BinaryIO


def send(pipe: BinaryIO, msg: Any) -> None:
    pickle.dump(msg, pipe, protocol=pickle.HIGHEST_PROTOCOL)
    pipe.flush()


def parse_addr(addr: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port); the control port of a group is PORT + 1."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--dist-init-addr must be HOST:PORT, got {addr!r}")
    return host.strip("[]"), int(port)


class Link:
    """One rank's control stream as rank 0 sees it."""

    def __init__(self, rank: int, rfile: BinaryIO, wfile: BinaryIO,
                 proc: subprocess.Popen | None = None, sock: socket.socket | None = None) -> None:
        self.rank, self.rfile, self.wfile, self.proc, self.sock = rank, rfile, wfile, proc, sock

    def write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def dead(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is not None
        assert self.sock is not None
        try:  # b"" = the peer closed; no data yet = alive
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def exit_code(self) -> str:
        return f"code {self.proc.wait()}" if self.proc is not None else "connection closed"

    def request_stop(self) -> None:
        try:
            self.write(pickle.dumps(("stop", None), protocol=pickle.HIGHEST_PROTOCOL))
            self.wfile.close()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def wait(self, timeout: float) -> None:
        """Wait for the rank's process (or its end of the socket) to go."""
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        else:
            assert self.sock is not None
            self.sock.settimeout(timeout)
            try:
                while self.sock.recv(4096):
                    pass
            except OSError:
                pass
            self.sock.close()
        self.rfile.close()


class WorkerPool:
    """Ranks 1..n-1. Local ones are `python -m server.distributed.worker` subprocesses (plain
    subprocesses: the engine process is a daemonic multiprocessing child, which may not start
    multiprocessing children); remote ones connect to the control listener (`accept`)."""

    def __init__(self, num_local: int) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.links: list[Link] = []
        for rank in range(1, num_local + 1):
            p = subprocess.Popen([sys.executable, "-m", "server.distributed.worker"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
            assert p.stdin is not None and p.stdout is not None
            self.links.append(Link(rank, p.stdout, p.stdin, proc=p))

    def accept(self, listener: socket.socket, ranks: range, timeout: float) -> None:
        """Wait for one connection per rank in `ranks`, each opening with ("join", rank)."""
        joined: dict[int, Link] = {}
        deadline = time.monotonic() + timeout
        while len(joined) < len(ranks):
            listener.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                sock, peer = listener.accept()
            except TimeoutError:
                missing = sorted(set(ranks) - set(joined))
                raise RuntimeError(f"tensor-parallel ranks {missing} did not connect in "
                                   f"{timeout:.0f}s (is `unmask serve --node-rank` running on "
                                   "every node?)") from None
            sock.settimeout(timeout)
            rfile, wfile = sock.makefile("rb"), sock.makefile("wb")
            try:
                kind, rank = pickle.load(rfile)
            except (EOFError, OSError, pickle.UnpicklingError, ValueError, TypeError):
                kind, rank = None, None
            if kind != "join" or rank not in ranks or rank in joined:
                sock.close()  # not one of ours, or a duplicate rank
                continue
            sock.settimeout(None)
            joined[rank] = Link(rank, rfile, wfile, sock=sock)
        self.links += [joined[r] for r in ranks]

    def send_each(self, msgs: list[Any]) -> None:
        for link, msg in zip(self.links, msgs, strict=True):
            link.write(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))

    def broadcast(self, msg: Any) -> None:
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        for link in self.links:
            link.write(data)

    def expect(self, kind: str) -> None:
        """Wait for message `kind` from every rank; RuntimeError with a rank's error or death."""
        for link in self.links:
            try:
                got = pickle.load(link.rfile)
            except (EOFError, OSError):
                raise RuntimeError(f"tensor-parallel rank {link.rank} exited "
                                   f"({link.exit_code()}) before {kind!r}; see its log") from None
            if got[0] != kind:
                detail = got[1] if got[0] == "error" else f"sent {got[0]!r}, not {kind!r}"
                raise RuntimeError(f"tensor-parallel rank {link.rank}: {detail}")

    def dead(self) -> list[int]:
        return [link.rank for link in self.links if link.dead()]

    def stop(self, timeout: float = 10) -> None:
        for link in self.links:
            link.request_stop()
        for link in self.links:
            link.wait(timeout)
