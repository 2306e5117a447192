"""The driver modules (`connman.backends.drivers`): their contract with each driver's internals,
and their classification of the drivers' real errors, on both dependency sets.

Each private attribute a driver module reaches is checked here on a live connection: a driver
release that renames it fails this file instead of making connman silently wrong.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from connman.backends.drivers import asyncpg as pg_driver
from connman.backends.drivers import classify, os_kind, peer_hung_up
from connman.backends.drivers import mysql as mysql_driver
from connman.backends.drivers import sqlite as sqlite_driver
from connman.testing.servers import Server, _alive

from .test_semantics import eventually


async def _mysql_connect(driver: str, server: Server, **kw: Any) -> Any:
    if driver == "aiomysql":
        import aiomysql

        return await aiomysql.connect(host=server.host, port=server.port, user="root",
                                      db="connman", **kw)
    import asyncmy

    return await asyncmy.connect(host=server.host, port=server.port, user="root",
                                 database="connman", **kw)


async def _mysql_scalar(conn: Any, sql: str) -> Any:
    from connman.backends._reset import mysql_cursor

    cur = await mysql_cursor(conn)
    try:
        await cur.execute(sql)
        row = await cur.fetchone()
    finally:
        await cur.close()
    return row[0]


async def _mysql_execute(conn: Any, sql: str) -> None:
    from connman.backends._reset import mysql_cursor

    cur = await mysql_cursor(conn)
    try:
        await cur.execute(sql)
    finally:
        await cur.close()


# ------------------------------------------------------------------ contracts: private reaches
@pytest.mark.postgres
async def test_asyncpg_transport_is_there_and_kill_drops_the_connection(
        postgres_server: Server) -> None:
    import asyncpg

    conn = await asyncpg.connect(postgres_server.url())
    transport = conn._transport  # the reach: must exist and be an asyncio transport
    assert hasattr(transport, "abort")
    assert not transport.is_closing()
    assert not pg_driver.closed(conn)
    pg_driver.kill(conn)
    assert pg_driver.closed(conn)
    assert transport.is_closing()


@pytest.mark.mysql
@pytest.mark.parametrize("driver", ["aiomysql", "asyncmy"])
async def test_mysql_transport_and_stream_reaches_hold(driver: str, mysql_server: Server) -> None:
    conn = await _mysql_connect(driver, mysql_server)
    try:
        transport = mysql_driver.transport(conn)
        assert transport is not None
        assert hasattr(transport, "abort")
        assert not transport.is_closing()
        if hasattr(conn, "_reader"):  # aiomysql, asyncmy < 0.2.10: asyncio's StreamReader
            assert conn._reader is not None
            assert conn._reader._eof is False
            assert conn._writer is not None
            assert conn._writer.transport is transport
        else:  # asyncmy >= 0.2.10: the transport only
            assert driver == "asyncmy"
            assert conn._transport is transport
        assert mysql_driver.hung_up(conn) is False
        # The server hangs up (KILL from another connection): seen without any I/O of ours.
        conn_id = await _mysql_scalar(conn, "SELECT CONNECTION_ID()")
        other = await _mysql_connect(driver, mysql_server)
        try:
            await _mysql_execute(other, f"KILL {conn_id}")
        finally:
            other.close()
        assert await eventually(lambda: mysql_driver.hung_up(conn), timeout=10.0)
    finally:
        mysql_driver.kill(conn)
    assert mysql_driver.hung_up(conn)


def _until(check: Any, timeout: float = 10.0) -> bool:
    """Poll `check()` without awaiting: the event loop reads nothing meanwhile."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.postgres
async def test_asyncpg_hang_up_is_seen_before_the_loop_reads_it(postgres_server: Server) -> None:
    """A backend terminated while its connection sits idle: its FATAL and EOF wait unread in the
    kernel until the loop polls (a task checking the connection out at that moment would send a
    statement into a dead session, or into asyncpg's stuck protocol). `closed()` tells at once."""
    import asyncpg
    import psycopg

    conn = await asyncpg.connect(postgres_server.url())
    try:
        pid = conn.get_server_pid()
        # The killer is synchronous: no await from here to the checks, so the loop reads nothing.
        with psycopg.connect(postgres_server.url(), autocommit=True) as killer:
            killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert _until(lambda: not _alive(pid))  # the backend exited: its socket is closed
        assert not conn.is_closed()  # asyncpg has not seen it
        assert pg_driver.closed(conn)
    finally:
        pg_driver.kill(conn)


@pytest.mark.mysql
@pytest.mark.parametrize("driver", ["aiomysql", "asyncmy"])
async def test_mysql_hang_up_is_seen_before_the_loop_reads_it(driver: str,
                                                              mysql_server: Server) -> None:
    import pymysql

    conn = await _mysql_connect(driver, mysql_server)
    try:
        conn_id = await _mysql_scalar(conn, "SELECT CONNECTION_ID()")
        killer = pymysql.connect(host=mysql_server.host, port=mysql_server.port, user="root")
        try:
            with killer.cursor() as cur:
                cur.execute(f"KILL {int(conn_id)}")
        finally:
            killer.close()
        assert _until(lambda: mysql_driver.hung_up(conn))
        reader = getattr(conn, "_reader", None)
        assert reader is None or reader._eof is False  # the driver's stream has not seen it
    finally:
        mysql_driver.kill(conn)


async def test_sqlalchemy_pool_subclass_contract_holds(tmp_path: Path) -> None:
    """What connman's `LedgerPool` relies on from SQLAlchemy's `Pool` (its extension point):
    checkouts come through `_do_get` and back through `_do_return_conn`; an invalidated record
    comes back without a DBAPI connection; `Pool._invalidate_time` (set by `invalidate_older`)
    makes the record reconnect at its next checkout; `recreate()` keeps the events and the bounds
    (`engine.dispose()`); a record's `invalidate()` works outside SQLAlchemy's greenlet."""
    from sqlalchemy import event
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.util import greenlet_spawn

    from connman.backends.sqlalchemy import LedgerPool

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}",
                                 poolclass=LedgerPool, pool_size=2, max_overflow=0)
    closed: list[Any] = []
    event.listen(engine.sync_engine.pool, "close", lambda dbapi, rec: closed.append(rec))
    try:
        pool: Any = engine.sync_engine.pool
        assert isinstance(pool, LedgerPool)
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
            assert len(pool.out) == 1
            assert pool.checkedout() == 1
        assert pool.checkedout() == 0
        assert len(pool.idle) == 1
        rec = pool.idle[0]
        first = rec.dbapi_connection
        assert first is not None
        assert isinstance(rec.info["cm_in"], float)
        assert pool.recent[id(first)] == rec.info["cm_in"]

        pool.invalidate_older()  # SQLAlchemy's own reconnect-on-checkout rule reads it
        assert pool.invalidated() >= rec.starttime
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
        assert pool.idle == [rec]
        assert rec.dbapi_connection is not first  # reconnected within the same record
        assert closed == [rec]

        taken = pool.take_idle()  # the fast path: no greenlet, no events
        assert taken is rec
        assert pool.checkedout() == 1
        taken.invalidate()  # outside the greenlet: terminated at once
        assert taken.dbapi_connection is None
        pool.give_back(taken)
        assert pool.open_count() == 0  # an empty record is forgotten

        fresh = await greenlet_spawn(pool.open_new)
        assert fresh.dbapi_connection is not None
        pool.give_back(fresh)
        assert pool.idle == [fresh]

        await engine.dispose()
        assert pool.disposed
        assert pool.idle == []
        new: Any = engine.sync_engine.pool
        assert isinstance(new, LedgerPool)
        assert new is not pool
        assert new.size() == 2
        assert new.dispatch.close  # the events carried over
    finally:
        await engine.dispose()


def test_peer_hung_up_without_a_socket_is_false() -> None:
    assert peer_hung_up(None) is False
    assert peer_hung_up(object()) is False


async def test_aiosqlite_connection_reach_holds(tmp_path: Path) -> None:
    import aiosqlite

    conn = await aiosqlite.connect(str(tmp_path / "c.db"))
    assert isinstance(conn._connection, sqlite3.Connection)
    assert not sqlite_driver.closed(conn)
    sqlite_driver.interrupt(conn)  # nothing runs: a no-op, and the connection stays usable
    async with conn.execute("SELECT 1") as cur:
        assert (await cur.fetchone()) == (1,)
    await conn.close()
    assert sqlite_driver.closed(conn)
    sqlite_driver.interrupt(conn)  # closed: a no-op


# ------------------------------------------------------------------ classification
def test_os_errors_are_classified_by_errno() -> None:
    assert os_kind(ConnectionRefusedError(111, "refused")) == "unreachable"
    assert os_kind(OSError(113, "no route")) == "unreachable"
    assert os_kind(ConnectionResetError(104, "reset")) == "lost"
    assert os_kind(TimeoutError()) is None
    assert os_kind(ValueError("x")) is None


def test_classify_looks_through_sqlalchemy_and_cause_chains() -> None:
    import asyncpg
    from sqlalchemy import exc as sa_exc

    driver_error = asyncpg.exceptions.TooManyConnectionsError("too many")
    wrapped = sa_exc.DBAPIError("SELECT 1", None, driver_error)  # type: ignore[arg-type]
    assert classify("asyncpg", wrapped) == "full"
    outer = RuntimeError("outer")
    outer.__cause__ = asyncpg.exceptions.ReadOnlySQLTransactionError("read only")
    assert classify("asyncpg", outer) == "read_only"
    assert classify("asyncpg", asyncpg.exceptions.UniqueViolationError("dup")) is None
    assert classify("asyncpg", asyncpg.exceptions.AdminShutdownError("bye")) == "ended"
    assert classify("asyncpg", asyncpg.exceptions.ConnectionDoesNotExistError("x")) == "lost"
    assert classify("asyncpg", asyncpg.exceptions.CannotConnectNowError("x")) == "unreachable"
    assert classify("asyncpg", asyncpg.exceptions.TargetServerAttributeNotMatched("x")) == (
        "read_only")
    assert classify("asyncpg", asyncpg.exceptions.InternalClientError("x")) == "lost"
    # An unknown driver still classifies socket errors.
    assert classify("nodriver", ConnectionRefusedError(111, "refused")) == "unreachable"


@pytest.mark.parametrize("driver", ["aiomysql", "asyncmy"])
def test_mysql_codes(driver: str) -> None:
    if driver == "aiomysql":
        from pymysql.err import InternalError, OperationalError
    else:
        from asyncmy.errors import InternalError, OperationalError  # type: ignore[no-redef]
    cases = {1040: "full", 1203: "full", 1226: "full", 2003: "unreachable", 1290: "read_only",
             1792: "read_only", 2013: "lost", 2006: "lost", 4031: "ended", 1927: "ended"}
    for code, kind in cases.items():
        assert classify(driver, OperationalError(code, "x")) == kind, code
    assert classify(driver, InternalError(1062, "duplicate")) is None
    assert classify(driver, OSError(111, "refused")) == "unreachable"


def test_sqlite_busy_is_locked_by_its_result_code(tmp_path: Path) -> None:
    path = str(tmp_path / "l.db")
    a = sqlite3.connect(path, timeout=0, isolation_level=None)
    b = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        a.execute("CREATE TABLE t (x int)")
        a.execute("BEGIN IMMEDIATE")
        a.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(sqlite3.OperationalError) as info:
            b.execute("BEGIN IMMEDIATE")
        assert info.value.sqlite_errorcode & 0xFF == sqlite_driver.SQLITE_BUSY
        assert classify("aiosqlite", info.value) == "locked"
        with pytest.raises(sqlite3.OperationalError) as other:
            b.execute("SELECT * FROM no_such_table")
        assert classify("aiosqlite", other.value) is None
    finally:
        a.close()
        b.close()


async def test_sqlalchemy_session_and_fairy_reaches_hold(tmp_path: Path) -> None:
    """The SQLAlchemy internals connman's units of work still read (listed in
    `connman/backends/sqlalchemy/__init__.py`): a session's root `_transaction`, its
    `_next_state` (a `_StateChangeStates` member, by `name`) and `_connections` (values whose first
    item is the `Connection`), read by `units._changing` / `units._session_connections` to end a
    session that `close()` could not; and, for the stranded-checkin repair on SQLAlchemy
    < 2.0.58, a fairy's `_connection_record` and `_counter`."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from connman.backends.sqlalchemy import LedgerPool
    from connman.backends.sqlalchemy.state import STRANDS_CHECKINS
    from connman.backends.sqlalchemy.units import _changing, _session_connections

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 's.db'}",
                                 poolclass=LedgerPool, pool_size=2, max_overflow=0)
    try:
        async with AsyncSession(engine) as session:
            sync: Any = session.sync_session
            assert sync._transaction is None
            assert _session_connections(sync) == []
            await session.execute(text("SELECT 1"))
            trans = sync._transaction
            assert type(trans._next_state).__name__ == "_StateChangeStates"  # an enum
            assert trans._next_state.name != "CHANGE_IN_PROGRESS"
            assert _changing(sync) is False
            held = _session_connections(sync)
            assert len(held) == 1
            assert held[0] is (await session.connection()).sync_connection
            fairy: Any = held[0].connection  # PoolProxiedConnection, a _ConnectionFairy
            pool: Any = engine.sync_engine.pool
            rec = next(iter(pool.out))
            assert fairy._connection_record is rec
            assert fairy._counter >= 1
        assert _session_connections(sync) == []
        assert fairy._connection_record is None  # checked in: detached from its record
        import sqlalchemy

        version = tuple(int(p) for p in sqlalchemy.__version__.split(".")[:3])
        assert (version < (2, 0, 58)) is STRANDS_CHECKINS
    finally:
        await engine.dispose()


async def test_connect_reaches_hold(tmp_path: Path) -> None:
    """What `backends/sqlalchemy/connect.py` reaches: aiomysql's `Connection._connect` (a
    coroutine function doing the handshake) and aiosqlite's worker thread (`Connection._thread`
    from 0.22, the connection itself before)."""
    import inspect
    import threading

    import aiomysql
    import aiosqlite

    assert inspect.iscoroutinefunction(aiomysql.Connection._connect)
    pending = aiosqlite.connect(str(tmp_path / "t.db"))
    thread = pending if isinstance(pending, threading.Thread) else pending._thread
    assert isinstance(thread, threading.Thread)
    conn = await pending
    try:
        assert thread.is_alive()
    finally:
        await conn.close()
