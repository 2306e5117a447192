"""Bounded driver calls: the kill each driver's deadline uses, a driver call run within a deadline,
and the emulated `statement_timeout` (every execute, COMMIT and ROLLBACK of an engine bounded).

A frozen server or a black-holed link answers nothing and closes nothing, so only a client-side
deadline ends a call. asyncpg has one (`command_timeout`); for the rest, and for the calls
connman makes itself (pre-ping, close), a timer kills the connection when the deadline passes:
the pending call then fails at once, and connman raises its typed error from that failure.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import event

from .._guard import Deadline as _Deadline
from .._guard import driver_timeout as _driver_timeout
from ..drivers import asyncpg as _asyncpg
from ..drivers import mysql as _mysql
from ..drivers import psycopg as _psycopg
from ..drivers import sqlite as _sqlite

T = TypeVar("T")


# How to drop a driver connection now, without a word to the server (the driver modules).
_KILL: dict[str, Callable[[Any], None]] = {
    "asyncpg": _asyncpg.kill,
    "psycopg": _psycopg.kill,
    "aiomysql": _mysql.kill,
    "asyncmy": _mysql.kill,
    "aiosqlite": _sqlite.interrupt,
}

# Drivers whose statements connman bounds itself (asyncpg's `command_timeout` is native).
# psycopg has none: connman's deadline, and its kill cancels the statement on the server.
_EMULATED_STATEMENT_TIMEOUT = ("psycopg", "aiomysql", "asyncmy", "aiosqlite")


def _call_within(seconds: float, kill: Callable[[Any], None], conn: Any,
                 expired: Callable[[], Exception], call: Callable[[], T]) -> T:
    """Run `call()` (a driver call, in SQLAlchemy's greenlet); past `seconds`, kill `conn`.

    Returns what `call()` returns; raises `expired()`, chained to the driver's error, when the
    deadline killed the connection, and the driver's own error otherwise.
    """
    deadline = _Deadline(seconds, kill, conn)
    try:
        return call()
    except Exception as exc:
        if deadline.fired:
            raise expired() from exc
        if _driver_timeout(exc):  # asyncpg's `command_timeout` ran out first
            deadline.cancel()
            deadline._fire(kill, conn)
            raise expired() from exc
        raise
    finally:
        deadline.cancel()


def _driver_conn(conn: Any) -> Any:
    """The driver's connection behind a pool proxy or SQLAlchemy's adapter (or itself)."""
    return getattr(conn, "driver_connection", conn)


def _bound_statements(sync_engine: Any, dialect: Any, seconds: float, kill: Callable[[Any], None],
                      expired: Callable[[], Exception]) -> None:
    """Bound every execute, COMMIT and ROLLBACK of an engine by `seconds` (the emulated
    `statement_timeout`): past it the connection is killed and `expired()` raised."""

    def within(conn: Any, call: Callable[[], Any]) -> Any:
        return _call_within(seconds, kill, _driver_conn(conn), expired, call)

    @event.listens_for(sync_engine, "do_execute")
    def do_execute(cursor: Any, statement: Any, parameters: Any, context: Any) -> bool:
        within(context.root_connection.connection,
               partial(dialect.do_execute, cursor, statement, parameters, context))
        return True  # executed here

    @event.listens_for(sync_engine, "do_execute_no_params")
    def do_execute_no_params(cursor: Any, statement: Any, context: Any) -> bool:
        within(context.root_connection.connection,
               partial(dialect.do_execute_no_params, cursor, statement, context))
        return True

    @event.listens_for(sync_engine, "do_executemany")
    def do_executemany(cursor: Any, statement: Any, parameters: Any, context: Any) -> bool:
        within(context.root_connection.connection,
               partial(dialect.do_executemany, cursor, statement, parameters, context))
        return True

    commit, rollback = dialect.do_commit, dialect.do_rollback
    dialect.do_commit = lambda conn: within(conn, partial(commit, conn))
    dialect.do_rollback = lambda conn: within(conn, partial(rollback, conn))
