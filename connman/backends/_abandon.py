"""Closing driver connections whose event loop is gone.

A pool opened in one event loop (a test's, an `asyncio.run`) and closed from another, or after that
loop closed, cannot await its driver's close: every coroutine of those connections belongs to the
dead loop. What can still be done is to close their sockets directly, so the server sees them go and
no `ResourceWarning` is left for the garbage collector. This reaches into the drivers' and asyncio's
private attributes, all of them here, each guarded: a driver version that lacks one is left to the
garbage collector.
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
    """Close one driver connection (asyncpg, aiomysql, asyncmy, aiosqlite) without its loop."""
    module = type(conn).__module__.split(".", 1)[0]
    if module == "asyncpg":
        close_transport(getattr(conn, "_transport", None))
        with contextlib.suppress(Exception):
            conn._aborted = True
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
        # Its worker thread closes the sqlite3 connection; no event loop is needed for that.
        stop = getattr(conn, "stop", None)
        if stop is not None:
            with contextlib.suppress(Exception):
                stop()
        else:
            conn._running = False
