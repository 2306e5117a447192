"""asyncpg: error classification, and killing a connection without I/O.

Classified by SQLSTATE (`PostgresError.sqlstate`, which SQLAlchemy's adapted error copies), with
the table both PostgreSQL drivers share (`connman.backends.drivers.POSTGRES_SQLSTATES`):

| SQLSTATE | name | kind |
| --- | --- | --- |
| 53300 | too_many_connections | full |
| 53400 | configuration_limit_exceeded | full |
| 57P03 | cannot_connect_now (starting up, shutting down, in recovery) | unreachable |
| 08001, 08004 | unable to establish / connection rejected | unreachable |
| 25006 | read_only_sql_transaction | read_only |
| 57P01, 57P02, 57P04 | admin_shutdown (terminated backend), crash_shutdown, database_dropped | ended |
| 25P03, 57P05 | idle_in_transaction_session_timeout, idle_session_timeout | ended |
| 28P01, 28000 | invalid_password, invalid_authorization_specification | credentials |
| other 08xxx | connection_exception (08003: closed mid-operation; PgBouncer's 08P01) | lost |
| (none) | `TargetServerAttributeNotMatched` (`target_session_attrs=read-write`) | read_only |
| (none) | `InternalClientError`: the protocol lost its state (a session ended mid-send) | lost |

and OS errors by errno (`connman.backends.drivers.os_kind`): a refused connect is `unreachable`.

Private attributes reached (each checked by tests/test_drivers.py or tests/test_reaches.py on
both dependency sets):

- `Connection._transport`: `kill()` aborts it after `terminate()`, because `terminate()` does
  nothing once a graceful `close()` has begun, and that close waits for a server that may never
  answer; `closed()` asks its socket for a hang-up the loop has not read yet;
  `close_without_loop()` closes its socket when the connection's event loop is gone (asyncpg's
  `terminate()` needs that loop).
- `Connection._aborted` (written): `close_without_loop()` sets it, as `terminate()` does, so
  `is_closed()` is True and asyncpg's own finalizer and pool see a closed connection.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from . import Kind, close_transport_without_loop, os_kind, peer_hung_up, postgres_kind

__all__ = ["classify", "close_without_loop", "closed", "kill"]


def classify(exc: BaseException) -> Kind | None:
    """The kind of one asyncpg (or SQLAlchemy-adapted asyncpg) error; None if not a server failure."""
    code = getattr(exc, "sqlstate", None)  # public on asyncpg's errors; absent on others
    if isinstance(code, str) and code:
        return postgres_kind(code)
    if isinstance(exc, asyncpg.exceptions.TargetServerAttributeNotMatched):
        # `target_session_attrs=read-write` (a URL parameter): no host of the URL accepts
        # writes now (a switchover in progress).
        return "read_only"
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        # The protocol lost its footing ("cannot switch to state ..."): seen when the server ends
        # the session (a terminated backend) while a statement is being sent. Never reusable.
        return "lost"
    return os_kind(exc)


def closed(conn: Any) -> bool:
    """Without I/O: whether the connection is closed or its server hung up.

    asyncpg marks a connection closed when the loop reads the EOF; a hang-up whose EOF is in the
    kernel but not read yet is seen at the socket (`peer_hung_up`).
    """
    return bool(conn.is_closed()) or peer_hung_up(conn._transport)


def kill(conn: Any) -> None:
    """Drop the connection now, without a word to the server."""
    conn.terminate()
    transport = conn._transport
    if transport is not None:
        transport.abort()


def close_without_loop(conn: Any) -> None:
    """Close the connection's socket when its event loop is gone (no I/O, no loop needed);
    the connection reads as closed after."""
    close_transport_without_loop(conn._transport)
    conn._aborted = True
