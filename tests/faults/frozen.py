"""Freeze a throwaway server the way a hung host looks to its clients: SIGSTOP, then SIGCONT.

A stopped process keeps its sockets open and the kernel still completes new TCP handshakes into
its listen backlog, so clients connect, send, and never hear back: no RST, no FIN, no error.
PostgreSQL's backends leave the postmaster's process group, so the whole process tree is stopped,
not only the group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator

from connman.testing.servers import Server, _descendants


def _tree(server: Server) -> list[int]:
    pid = getattr(server, "pid", None)
    if pid is None:
        raise RuntimeError(f"{server!r} runs no local process to freeze")
    return [pid, *_descendants(pid)]


def _signal(pids: list[int], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pids[0], sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _running(pid: int) -> bool:
    """Whether any thread of `pid` is not stopped yet (a gone process is not running)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                state = f.read().rsplit(")", 1)[-1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("T", "t", "Z", "X"):
            return True
    return False


def freeze(server: Server, timeout: float = 5.0) -> list[int]:
    """SIGSTOP the server's process tree and wait until every thread of it is stopped (a stop is
    delivered asynchronously); returns the pids to pass to `thaw`."""
    pids = _tree(server)
    _signal(pids, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while any(_running(pid) for pid in pids):
        if time.monotonic() > deadline:
            thaw(pids)
            raise RuntimeError(f"{server!r} did not stop within {timeout:g}s")
        time.sleep(0.001)
    return pids


def thaw(pids: list[int]) -> None:
    """SIGCONT what `freeze` stopped (and anything that joined the tree meanwhile)."""
    _signal([*pids, *_descendants(pids[0])], signal.SIGCONT)


@contextlib.contextmanager
def frozen(server: Server) -> Iterator[None]:
    """The server stays frozen for the block; it is thawed whatever happens in it."""
    pids = freeze(server)
    try:
        yield
    finally:
        thaw(pids)
