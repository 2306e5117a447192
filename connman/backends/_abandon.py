"""Closing driver connections whose event loop is gone.

A pool opened in one event loop (a test's, an `asyncio.run`) and closed from another, or after that
loop closed, cannot await its driver's close: every coroutine of those connections belongs to the
dead loop. What can still be done is to close their sockets directly, so the server sees them go and
no `ResourceWarning` is left for the garbage collector. This reaches into the drivers' and asyncio's
private attributes (the drivers' other reaches are in `backends/drivers/`), each guarded: a driver
version that lacks one is left to the garbage collector.
"""

from __future__ import annotations

import contextlib
from typing import Any


def close_transport(transport: Any) -> None:
    """Close an asyncio transport's socket without its event loop."""
    if transport is None:
        return
    sock = getattr(transport, "_sock", None)
    if sock is None:
        return
    with contextlib.suppress(Exception):
        sock.close()
    with contextlib.suppress(Exception):
        transport._sock = None
        transport._closing = True


def close_driver_connection(conn: Any) -> None:
    """Close one driver connection (asyncpg, psycopg, aiomysql, asyncmy, aiosqlite) without
    its loop."""
    module = type(conn).__module__.split(".", 1)[0]
    if module == "asyncpg":
        close_transport(getattr(conn, "_transport", None))
        with contextlib.suppress(Exception):
            conn._aborted = True
    elif module == "psycopg":
        from .drivers.psycopg import close_without_loop

        close_without_loop(conn)
    elif module == "aiomysql":
        writer = getattr(conn, "_writer", None)
        close_transport(getattr(writer, "transport", None))
        with contextlib.suppress(Exception):
            conn._writer = None
            conn._reader = None
    elif module == "asyncmy":
        with contextlib.suppress(Exception):
            close_transport(conn._transport)
    elif module == "aiosqlite":
        with contextlib.suppress(Exception):
            _stop_aiosqlite(conn)


class _NoLoop:
    """Stands in for the future aiosqlite's worker thread reports to: nobody waits for it."""

    def get_loop(self) -> _NoLoop:
        return self

    def call_soon_threadsafe(self, *args: Any) -> None:
        """Nothing to report to."""


def _stop_aiosqlite(conn: Any) -> None:
    """Have aiosqlite's worker thread close its sqlite3 connection and end, with no event loop
    (its own `stop()` reports to a future of the current loop, which may be gone by then)."""
    from aiosqlite.core import _STOP_RUNNING_SENTINEL

    def close() -> Any:
        raw = conn._connection
        if raw is not None:
            raw.close()
            conn._connection = None
        return _STOP_RUNNING_SENTINEL  # aiosqlite >= 0.22: the worker ends on this result

    conn._running = False
    conn._tx.put_nowait((_NoLoop(), close))
    if not hasattr(conn, "_thread"):  # aiosqlite < 0.22: the connection is the thread
        conn._tx.put_nowait(_STOP_RUNNING_SENTINEL)
