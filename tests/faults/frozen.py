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


def freeze(server: Server) -> list[int]:
    """SIGSTOP the server's process tree; returns the pids to pass to `thaw`."""
    pids = _tree(server)
    _signal(pids, signal.SIGSTOP)
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
