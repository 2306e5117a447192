"""aiosqlite: error classification, interrupt, closed check, close without the event loop.

Classified by the SQLite result code (`sqlite3.Error.sqlite_errorcode`, primary code in its low
byte): SQLITE_BUSY (5: another connection holds the lock the statement needs, and the busy
`timeout` ran out) and SQLITE_LOCKED (6: a conflict inside one connection or shared cache), with
their extended codes, are `locked`. Nothing else is a server failure: SQLite has no server.

Private attributes reached (each checked by tests/test_drivers.py or tests/test_reaches.py on
both dependency sets):

- `aiosqlite.Connection._connection`: the `sqlite3.Connection` its thread uses (None once
  closed). `interrupt()` calls its `interrupt()`, which is safe from any thread, so a statement
  stops at once instead of holding the connection and its file lock; `closed()` reads it;
  `close_without_loop()` closes it on the worker thread and clears it.
- `Connection._tx` (the worker thread's `SimpleQueue` of `(future, function)`), `._running`
  (written: False refuses further calls, as `close()` does) and `aiosqlite.core.
  _STOP_RUNNING_SENTINEL` (what ends the worker): `close_without_loop()` has the worker close its
  `sqlite3.Connection` and end with no event loop to report to. aiosqlite's `close()` awaits a
  future of the loop; its `stop()` (0.22+) makes its future with `asyncio.get_event_loop()`,
  which may be a closed loop (the worker then dies on `call_soon_threadsafe`) or none. How the
  worker ends differs by version: aiosqlite >= 0.22 runs it on `Connection._thread` and stops
  on a function returning the sentinel; < 0.22 the connection is the `Thread` and stops on the
  sentinel itself put on the queue.
"""

from __future__ import annotations

import threading
from typing import Any

from . import Kind

__all__ = ["classify", "close_without_loop", "closed", "interrupt"]

SQLITE_BUSY = 5
SQLITE_LOCKED = 6


def classify(exc: BaseException) -> Kind | None:
    """`locked` for SQLITE_BUSY/SQLITE_LOCKED (and their extended codes), else None."""
    code = getattr(exc, "sqlite_errorcode", None)  # public on sqlite3.Error (Python 3.11+)
    if isinstance(code, int) and code & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED):
        return "locked"
    return None


def closed(conn: Any) -> bool:
    """Whether the aiosqlite connection is closed."""
    return conn._connection is None


def interrupt(conn: Any) -> None:
    """Stop the statement running on the connection's thread now (no-op once closed)."""
    raw = conn._connection
    if raw is not None:
        raw.interrupt()


class _NoLoop:
    """Stands in for the future aiosqlite's worker thread reports to: nobody waits for it."""

    def get_loop(self) -> _NoLoop:
        return self

    def call_soon_threadsafe(self, *args: Any) -> None:
        """Nothing to report to."""


def close_without_loop(conn: Any) -> None:
    """Have the connection's worker thread close its `sqlite3.Connection` and end, with no event
    loop (for a connection whose loop is gone). Returns at once; the thread does it."""
    from aiosqlite.core import _STOP_RUNNING_SENTINEL

    def close() -> Any:
        raw = conn._connection
        if raw is not None:
            raw.close()
            conn._connection = None
        return _STOP_RUNNING_SENTINEL  # aiosqlite >= 0.22: the worker ends on this result

    tx = conn._tx
    conn._running = False
    tx.put_nowait((_NoLoop(), close))
    if isinstance(conn, threading.Thread):  # aiosqlite < 0.22: the connection is the thread
        tx.put_nowait(_STOP_RUNNING_SENTINEL)
