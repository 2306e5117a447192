"""aiomysql and asyncmy (MySQL, MariaDB): error classification, hang-up check, kill, full reset,
close without the event loop.

Classified by the MySQL error number (`args[0]` of the drivers' `MySQLError`s):

| code | name | kind |
| --- | --- | --- |
| 1040 | ER_CON_COUNT_ERROR (too many connections) | full |
| 1203 | ER_TOO_MANY_USER_CONNECTIONS (global max_user_connections) | full |
| 1226 | ER_USER_LIMIT_REACHED (the user's MAX_USER_CONNECTIONS) | full |
| 2002, 2003, 2005 | CR_CONNECTION_ERROR, CR_CONN_HOST_ERROR, CR_UNKNOWN_HOST | unreachable |
| 3032 | ER_SERVER_OFFLINE_MODE | unreachable |
| 1290 | ER_OPTION_PREVENTS_STATEMENT (`--read-only`) | read_only |
| 1792, 1836 | ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION, ER_READ_ONLY_MODE | read_only |
| 2006, 2013, 2055 | CR_SERVER_GONE_ERROR, CR_SERVER_LOST, CR_SERVER_LOST_EXTENDED | lost |
| 1053, 1927, 4031 | ER_SERVER_SHUTDOWN, ER_CONNECTION_KILLED, ER_CLIENT_INTERACTION_TIMEOUT | ended |

and OS errors by errno (`connman.backends.drivers.os_kind`).

Note 1290 also answers other server options that refuse a statement (`--secure-file-priv`,
`--skip-grant-tables`); `--read-only` is the one a running app meets.

Private attributes reached (each checked by tests/test_drivers.py or tests/test_reaches.py on
both dependency sets):

- aiomysql, asyncmy < 0.2.10: `Connection._reader`, `Connection._writer` (asyncio streams), and
  asyncio's `StreamReader._eof`: the stream saw the server hang up before the driver reads it
  (its public `at_eof()` is False while an unread goodbye packet, such as error 4031, is buffered).
- asyncmy >= 0.2.10: `Connection._transport` (it has no streams).
  The transport is how a connection is dropped now (`abort()`): `close()` would first flush to a
  peer that may not read; and how it is closed without its event loop (`close_without_loop`:
  the transport's socket is closed, then the driver's own `close()` only marks it closed).
- `Connection._execute_command(COM_RESET_CONNECTION, b"")` and `Connection._read_ok_packet()`
  (both drivers): `full_reset()` sends the protocol's COM_RESET_CONNECTION, which neither driver
  exposes (PyMySQL's and aiomysql's public API have no reset; asyncmy's neither).
"""

from __future__ import annotations

import inspect
from typing import Any

from . import Kind, close_transport_without_loop, os_kind, peer_hung_up

__all__ = ["COM_RESET_CONNECTION", "classify", "close_without_loop", "cursor", "full_reset",
           "hung_up", "kill", "transport"]

COM_RESET_CONNECTION = 0x1F

_BY_CODE: dict[int, Kind] = {
    1040: "full",
    1203: "full",
    1226: "full",
    2002: "unreachable",
    2003: "unreachable",
    2005: "unreachable",
    3032: "unreachable",
    1290: "read_only",
    1792: "read_only",
    1836: "read_only",
    2006: "lost",
    2013: "lost",
    2055: "lost",
    1053: "ended",
    1927: "ended",
    4031: "ended",
    1045: "credentials",  # ER_ACCESS_DENIED_ERROR: a wrong or rotated password
}
_MODULES = ("pymysql.", "aiomysql.", "asyncmy.")


def classify(exc: BaseException) -> Kind | None:
    """The kind of one aiomysql/asyncmy (PyMySQL) error; None if not a server failure."""
    if isinstance(exc, OSError):
        return os_kind(exc)
    if type(exc).__module__.startswith(_MODULES) and exc.args and isinstance(exc.args[0], int):
        return _BY_CODE.get(exc.args[0])
    return None


def transport(conn: Any) -> Any:
    """The connection's asyncio transport (None once closed)."""
    if hasattr(type(conn), "_transport") or "_transport" in getattr(conn, "__dict__", ()):
        return conn._transport  # asyncmy >= 0.2.10
    writer = conn._writer  # aiomysql, asyncmy < 0.2.10
    return writer.transport if writer is not None else None


def hung_up(conn: Any) -> bool:
    """Without I/O: closed, or its server hung up (the stream saw EOF, the transport closes)."""
    if hasattr(conn, "connected"):  # asyncmy
        if conn.connected is False:
            return True
    elif conn.closed:  # aiomysql
        return True
    reader = conn._reader if hasattr(conn, "_reader") else None
    if reader is not None and reader._eof:
        return True
    t = transport(conn)
    # No transport: closed (asyncmy < 0.2.10 keeps `connected` True after close()).
    return t is None or bool(t.is_closing()) or peer_hung_up(t)


def kill(conn: Any) -> None:
    """Drop the connection now (abort its transport), then let the driver mark it closed."""
    t = transport(conn)
    if t is not None:
        t.abort()
    conn.close()


def close_without_loop(conn: Any) -> None:
    """Close the connection's socket when its event loop is gone; the driver marks it closed.

    The driver's own `close()` calls its transport's `close()`, which schedules the socket's close
    on the (dead) loop; once the socket is closed here that call returns at once, so `close()` is
    then safe without the loop. A transport whose socket is out of reach (TLS, uvloop) is left
    to the garbage collector.
    """
    t = transport(conn)
    if t is None or close_transport_without_loop(t):
        conn.close()


async def cursor(conn: Any) -> Any:
    """A cursor of an aiomysql or asyncmy connection (aiomysql's `cursor()` is an awaitable,
    asyncmy's returns the cursor itself)."""
    cur = conn.cursor()
    return await cur if inspect.isawaitable(cur) else cur


async def full_reset(conn: Any) -> None:
    """`reset_on_return="full"`: the protocol's COM_RESET_CONNECTION (session variables, user
    variables, temporary tables, named locks, prepared statements), then the character set and
    autocommit mode the driver had set are set again. Raises the driver's error on failure."""
    autocommit = bool(conn.get_autocommit())
    charset = conn.character_set_name()
    await conn._execute_command(COM_RESET_CONNECTION, b"")
    await conn._read_ok_packet()
    cur = await cursor(conn)
    try:
        await cur.execute(f"SET NAMES {charset}, autocommit = {int(autocommit)}")
    finally:
        await cur.close()
