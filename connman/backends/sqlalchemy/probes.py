"""What connman asks each driver's raw connection without SQLAlchemy: closed (without I/O)? in a
transaction? roll back, ping; and whether a driver's error may mean its connection is broken."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._reset import mysql_cursor
from ..drivers import asyncpg as _asyncpg
from ..drivers import mysql as _mysql
from ..drivers import psycopg as _psycopg
from ..drivers import sqlite as _sqlite

# HikariCP's aliveBypassWindowMs: a connection used this recently is not pinged again.
ALIVE_BYPASS_S = 0.5


class _Probe:
    """How to ask one driver's raw connection, without I/O, whether it is closed or in a transaction."""

    __slots__ = ("closed", "in_transaction", "ping", "rollback")

    def __init__(self, closed: Callable[[Any], bool], in_transaction: Callable[[Any], bool],
                 rollback: Callable[[Any], Any], ping: Callable[[Any], Any]) -> None:
        self.closed = closed
        self.in_transaction = in_transaction
        self.rollback = rollback
        self.ping = ping


async def _mysql_select1(conn: Any) -> None:
    cur = await mysql_cursor(conn)
    try:
        await cur.execute("SELECT 1")
        await cur.fetchall()
    finally:
        await cur.close()


async def _sqlite_select1(conn: Any) -> None:
    cur = await conn.execute("SELECT 1")
    try:
        await cur.fetchall()
    finally:
        await cur.close()


# `closed`: without I/O, is the connection closed or has its server hung up (its socket saw EOF)?
# The drivers notice at their next read; their socket knows at once (`drivers.peer_hung_up`).
_PROBES: dict[str, _Probe] = {
    "asyncpg": _Probe(_asyncpg.closed, lambda c: c.is_in_transaction(),
                      lambda c: c.execute("ROLLBACK"), lambda c: c.fetchval("SELECT 1")),
    "psycopg": _Probe(_psycopg.hung_up, _psycopg.in_transaction, _psycopg.rollback,
                      _psycopg.ping),
    "aiomysql": _Probe(_mysql.hung_up, lambda c: c.get_transaction_status(),
                       lambda c: c.rollback(), _mysql_select1),
    "asyncmy": _Probe(_mysql.hung_up, lambda c: c.get_transaction_status(),
                      lambda c: c.rollback(), _mysql_select1),
    "aiosqlite": _Probe(_sqlite.closed, lambda c: c.in_transaction,
                        lambda c: c.rollback(), _sqlite_select1),
}


_DISCONNECT_NAMES = frozenset({"OperationalError", "InterfaceError", "ConnectionDoesNotExistError",
                               "PostgresConnectionError", "InternalClientError"})


def _may_be_disconnected(exc: BaseException) -> bool:
    """Whether a driver's own exception (fast path, probe) may mean its connection is broken.

    A driver connection can look open after its socket died (asyncmy < 0.2.10 keeps `connected`
    True), so such an error discards the connection rather than trust it: the MySQL drivers'
    OperationalError and InterfaceError, asyncpg's connection errors, and OS-level errors.
    """
    if isinstance(exc, (OSError, ConnectionError, TimeoutError)):
        return True
    psycopg_says = _psycopg.may_be_disconnected(exc)
    if psycopg_says is not None:
        return psycopg_says
    return any(cls.__name__ in _DISCONNECT_NAMES for cls in type(exc).__mro__)
