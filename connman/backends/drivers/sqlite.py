"""aiosqlite: error classification, interrupt, closed check.

Classified by the SQLite result code (`sqlite3.Error.sqlite_errorcode`, primary code in its low
byte): SQLITE_BUSY (5: another connection holds the lock the statement needs, and the busy
`timeout` ran out) and SQLITE_LOCKED (6: a conflict inside one connection or shared cache), with
their extended codes, are `locked`. Nothing else is a server failure: SQLite has no server.

Private attributes reached (each checked by tests/test_drivers.py on both dependency sets):

- `aiosqlite.Connection._connection`: the `sqlite3.Connection` its thread uses (None once
  closed). `interrupt()` calls its `interrupt()`, which is safe from any thread, so a statement
  stops at once instead of holding the connection and its file lock; `closed()` reads it.
"""

from __future__ import annotations

from typing import Any

from . import Kind

__all__ = ["classify", "closed", "interrupt"]

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
