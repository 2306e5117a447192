"""Contracts with other projects' internals: one test per private attribute connman reaches
outside its SQLAlchemy backend, on live connections to the suite's servers, on both dependency
sets. Each fails if the attribute disappears or changes meaning, instead of connman silently
doing the wrong thing. The reaches and why each is needed are listed in the owning module's
docstring: `connman/backends/drivers/{__init__,asyncpg,mysql,sqlite,pymongo}.py`, `connman/_app.py`.
(tests/test_drivers.py checks the drivers' older reaches: asyncpg's and the MySQL drivers'
transports and streams, asyncio's `StreamReader._eof`, aiosqlite's `_connection`.)

"Without its loop" tests open a connection under `asyncio.run` and close it after that loop is
gone, as connman does for a pool dropped from another loop.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import sqlite3
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connman.backends.drivers import _SELECTOR_TRANSPORT, close_transport_without_loop
from connman.backends.drivers import asyncpg as pg_driver
from connman.backends.drivers import mysql as mysql_driver
from connman.backends.drivers import sqlite as sqlite_driver
from connman.testing.servers import Server, _alive

from .test_drivers import _mysql_connect, _mysql_execute, _mysql_scalar, _until


def _collected_warnings() -> list[str]:
    """The warnings garbage collection raises now (finalizers of what a test dropped)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    return [str(w.message) for w in caught]


# ------------------------------------------------------------------ asyncio
@pytest.mark.postgres
def test_asyncio_selector_transport_sock_and_closing(postgres_server: Server) -> None:
    """`_SelectorTransport._sock` is the transport's socket and `_closing` what `is_closing()`
    reads; closing the socket without the loop closes the connection for the server too."""
    async def open_one() -> tuple[Any, int]:
        transport, _ = await asyncio.get_running_loop().create_connection(
            asyncio.Protocol, postgres_server.host, postgres_server.port)
        return transport, transport.get_extra_info("socket").fileno()

    transport, fd = asyncio.run(open_one())  # that loop is gone now
    assert isinstance(transport, _SELECTOR_TRANSPORT)
    sock = transport._sock
    assert isinstance(sock, socket.socket)
    assert sock.fileno() == fd
    assert transport._closing is False
    assert transport.is_closing() is False
    assert close_transport_without_loop(transport) is True
    assert transport.is_closing() is True
    assert transport._sock is None
    assert sock.fileno() == -1
    assert close_transport_without_loop(transport) is False  # already closed: nothing to do
    assert close_transport_without_loop(None) is False
    assert close_transport_without_loop(object()) is False
    del transport
    assert not [w for w in _collected_warnings() if "unclosed transport" in w]


# ------------------------------------------------------------------ asyncpg
@pytest.mark.postgres
def test_asyncpg_close_without_loop_aborted_and_transport(postgres_server: Server) -> None:
    """`Connection._aborted` is what `is_closed()` reads; with `_transport`'s socket closed the
    server's backend ends, and nothing is left for the collector to warn about."""
    import asyncpg

    async def open_one() -> tuple[Any, int]:
        conn = await asyncpg.connect(postgres_server.url())
        return conn, conn.get_server_pid()

    conn, pid = asyncio.run(open_one())
    assert conn._aborted is False
    assert not conn.is_closed()
    pg_driver.close_without_loop(conn)
    assert conn._aborted is True
    assert conn.is_closed()
    assert _until(lambda: not _alive(pid))  # the server saw the client go
    del conn
    assert not [w for w in _collected_warnings() if "nclosed" in w]


# ------------------------------------------------------------------ aiomysql, asyncmy
@pytest.mark.mysql
@pytest.mark.parametrize("driver", ["aiomysql", "asyncmy"])
def test_mysql_close_without_loop(driver: str, mysql_server: Server) -> None:
    """The transport's socket closed without the loop, the driver's own `close()` is safe and
    marks the connection closed; the server drops the session."""
    import pymysql

    async def open_one() -> tuple[Any, int]:
        conn = await _mysql_connect(driver, mysql_server)
        return conn, int(await _mysql_scalar(conn, "SELECT CONNECTION_ID()"))

    conn, conn_id = asyncio.run(open_one())
    transport = mysql_driver.transport(conn)
    assert isinstance(transport, _SELECTOR_TRANSPORT)
    mysql_driver.close_without_loop(conn)
    assert transport.is_closing()
    assert mysql_driver.transport(conn) is None  # the driver dropped it: closed
    assert mysql_driver.hung_up(conn)

    def gone() -> bool:
        admin = pymysql.connect(host=mysql_server.host, port=mysql_server.port, user="root")
        try:
            with admin.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s",
                            (conn_id,))
                row = cur.fetchone()
                return row is not None and row[0] == 0
        finally:
            admin.close()

    assert _until(gone)
    del conn, transport
    assert not [w for w in _collected_warnings() if "nclosed" in w]


@pytest.mark.mysql
@pytest.mark.parametrize("driver", ["aiomysql", "asyncmy"])
async def test_mysql_reset_connection_command(driver: str, mysql_server: Server) -> None:
    """`_execute_command(COM_RESET_CONNECTION, b"")` + `_read_ok_packet()` reset the session
    (user variables, temporary tables) and leave the connection usable; `character_set_name()`
    is the character set the driver set, put back after."""
    conn = await _mysql_connect(driver, mysql_server, autocommit=True)
    try:
        charset = conn.character_set_name()
        assert isinstance(charset, str)
        assert await _mysql_scalar(conn, "SELECT @@character_set_client") == charset
        await _mysql_execute(conn, "SET @connman_x = 42")
        await _mysql_execute(conn, "CREATE TEMPORARY TABLE connman_tmp (v int)")
        assert await _mysql_scalar(conn, "SELECT @connman_x") == 42
        await mysql_driver.full_reset(conn)
        assert await _mysql_scalar(conn, "SELECT @connman_x") is None
        # The temporary table is gone: creating it again succeeds.
        await _mysql_execute(conn, "CREATE TEMPORARY TABLE connman_tmp (v int)")
        assert await _mysql_scalar(conn, "SELECT @@character_set_client") == charset
        assert await _mysql_scalar(conn, "SELECT @@autocommit") == 1
        assert bool(conn.get_autocommit()) is True
    finally:
        mysql_driver.kill(conn)


# ------------------------------------------------------------------ aiosqlite
def test_aiosqlite_close_without_loop_tx_running_sentinel(tmp_path: Path) -> None:
    """`_tx` is the worker's queue of `(future, function)`, `_running = False` refuses new calls,
    and the worker ends on `_STOP_RUNNING_SENTINEL` (its result on aiosqlite >= 0.22, the queued
    item before): the sqlite3 connection is closed on the worker thread, which ends."""
    import queue

    import aiosqlite
    from aiosqlite.core import _STOP_RUNNING_SENTINEL

    async def open_one() -> Any:
        conn = await aiosqlite.connect(str(tmp_path / "w.db"))
        async with conn.execute("SELECT 1") as cur:
            assert (await cur.fetchone()) == (1,)
        return conn

    conn = asyncio.run(open_one())
    assert _STOP_RUNNING_SENTINEL is not None
    assert isinstance(conn._tx, queue.SimpleQueue)
    assert conn._running is True
    raw = conn._connection
    assert isinstance(raw, sqlite3.Connection)
    # aiosqlite >= 0.22 runs the worker on `_thread`; before, the connection is the thread.
    worker = conn if isinstance(conn, threading.Thread) else conn._thread
    assert isinstance(worker, threading.Thread)
    assert worker.is_alive()
    sqlite_driver.close_without_loop(conn)
    worker.join(10.0)
    assert not worker.is_alive()
    assert conn._running is False
    assert sqlite_driver.closed(conn)
    with pytest.raises(sqlite3.ProgrammingError):
        raw.execute("SELECT 1")  # closed on the worker thread

    async def refused(conn: Any) -> None:
        with pytest.raises(ValueError, match="connection"):
            await conn.execute("SELECT 1")  # refused by aiosqlite itself, nothing queued

    asyncio.run(refused(conn))
    del conn, raw, worker
    assert not [w for w in _collected_warnings() if "deleted before being closed" in w]


# ------------------------------------------------------------------ PyMongo, Motor
def _mongo_url(server: Server) -> str:
    base = server.url(database="connman")
    return base + ("&" if "?" in base else "?") + "serverMonitoringMode=poll"


class _Closed:
    """A CMAP listener that records `(connection_id, reason)` of each closed connection."""

    def __init__(self) -> None:
        from pymongo import monitoring

        class Listener(monitoring.ConnectionPoolListener):
            def __init__(self, out: list[tuple[int, str]]) -> None:
                self.out = out

            def connection_closed(self, event: Any) -> None:
                self.out.append((event.connection_id, str(event.reason)))

            def __getattr__(self, name: str) -> Callable[[Any], None]:
                return lambda event: None  # the other CMAP events: nothing to record

        self.events: list[tuple[int, str]] = []
        self.listener = Listener(self.events)


def _mongo_client(driver: str, server: Server, **kw: Any) -> Any:
    if driver == "motor":
        from motor.motor_asyncio import AsyncIOMotorClient

        return AsyncIOMotorClient(_mongo_url(server), **kw)
    from pymongo import AsyncMongoClient

    return AsyncMongoClient(_mongo_url(server), **kw)


async def _close_client(client: Any) -> None:
    closing = client.close()
    if asyncio.iscoroutine(closing):
        await closing


async def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


MONGO_DRIVERS = pytest.mark.parametrize("driver", ["pymongo", "motor"])


@pytest.mark.mongo
@MONGO_DRIVERS
async def test_pymongo_topology_servers_and_pool_shape(driver: str, mongo_server: Server) -> None:
    """`client._topology._servers` gives the server pools; each has its idle deque `conns`,
    `active_sockets`, `address`, `lock`, and its connections `id`, `generation`,
    `idle_time_seconds()`."""
    import collections

    from connman.backends.drivers import pymongo as mongo_driver

    client = _mongo_client(driver, mongo_server)
    try:
        await client.admin.command("ping")
        pools = mongo_driver.server_pools(client, motor=driver == "motor")
        assert len(pools) == 1
        pool = pools[0]
        assert pool.address == (mongo_server.host, mongo_server.port)
        assert isinstance(pool.conns, collections.deque)
        assert len(pool.conns) >= 1  # the ping's connection, back idle
        assert pool.active_sockets == 0
        if driver == "motor":
            with pool.lock:  # a threading lock (Motor's worker threads take it; shrink too)
                pass
        conn = pool.conns[0]
        assert isinstance(conn.id, int)
        assert isinstance(conn.generation, int)
        assert conn.generation >= 0
        idle = conn.idle_time_seconds()
        assert isinstance(idle, float)
        assert idle >= 0.0
    finally:
        await _close_client(client)


@pytest.mark.mongo
@MONGO_DRIVERS
async def test_pymongo_generation_minus_one_retires_a_connection(driver: str,
                                                                 mongo_server: Server) -> None:
    """`conn.generation = -1`: PyMongo closes that connection as stale instead of reusing it."""
    from pymongo import monitoring

    from connman.backends.drivers import pymongo as mongo_driver

    closed = _Closed()
    client = _mongo_client(driver, mongo_server, event_listeners=[closed.listener])
    try:
        await client.admin.command("ping")
        pool = mongo_driver.server_pools(client, motor=driver == "motor")[0]
        ids = [conn.id for conn in pool.conns]
        assert ids
        for conn in list(pool.conns):
            mongo_driver.retire(conn)
        await client.admin.command("ping")
        stale = monitoring.ConnectionClosedReason.STALE
        assert await _eventually(lambda: {(i, stale) for i in ids} <= set(closed.events))
    finally:
        await _close_client(client)


@pytest.mark.mongo
@MONGO_DRIVERS
async def test_pymongo_pool_checkin_reassigned_is_called(driver: str,
                                                         mongo_server: Server) -> None:
    """PyMongo checks a connection in through the pool's own `checkin` attribute, so the one
    connman sets on the live pool runs for each connection that comes back (once per pool)."""
    from connman.backends.drivers import pymongo as mongo_driver

    client = _mongo_client(driver, mongo_server)
    seen: list[tuple[Any, int]] = []
    try:
        await client.admin.command("ping")
        pool = mongo_driver.server_pools(client, motor=driver == "motor")[0]
        mongo_driver.wrap_checkin(pool, lambda address, conn: seen.append((address, conn.id)))
        mongo_driver.wrap_checkin(pool, lambda address, conn: seen.append((address, -1)))
        await client.admin.command("ping")
        assert await _eventually(lambda: len(seen) >= 1)
        assert seen == [(pool.address, seen[0][1])]  # once, by the first wrapper only
        assert seen[0][1] >= 0
    finally:
        await _close_client(client)


@pytest.mark.mongo
@MONGO_DRIVERS
async def test_pymongo_shrink_closes_idle_connections(driver: str, mongo_server: Server) -> None:
    """Popping from `pool.conns` and `close_conn(IDLE)` closes an idle connection (CMAP reason
    "idle"), and the pool reads it gone."""
    from pymongo import monitoring

    from connman.backends.drivers import pymongo as mongo_driver

    closed = _Closed()
    client = _mongo_client(driver, mongo_server, event_listeners=[closed.listener])
    try:
        await client.admin.command("ping")
        pool = mongo_driver.server_pools(client, motor=driver == "motor")[0]
        ids = [conn.id for conn in pool.conns]
        assert ids
        await mongo_driver.shrink(pool, 0, 0.0, pool.lock if driver == "motor" else None)
        assert len(pool.conns) == 0
        idle = monitoring.ConnectionClosedReason.IDLE
        assert await _eventually(lambda: {(i, idle) for i in ids} <= set(closed.events))
        await client.admin.command("ping")  # the pool opens a new one
    finally:
        await _close_client(client)


@pytest.mark.mongo
def test_pymongo_close_client_without_loop(mongo_server: Server) -> None:
    """`server._monitor._pool`, `._rtt_monitor._pool`, `conn.conn.conn[0]` (the connection's
    asyncio transport) and `client._closed`: the idle sockets close with the loop gone, and the
    client's finalizer does not warn that it was left unclosed."""
    from pymongo import AsyncMongoClient

    from connman.backends.drivers import pymongo as mongo_driver

    async def open_one() -> tuple[Any, list[Any]]:
        client: Any = AsyncMongoClient(_mongo_url(mongo_server))
        await client.admin.command("ping")
        transports = []
        for server in list(client._topology._servers.values()):
            monitor = server._monitor
            pools = (server.pool, monitor._pool, monitor._rtt_monitor._pool)
            assert len({id(p) for p in pools}) == 3
            for pool in pools:
                transports += [conn.conn.conn[0] for conn in pool.conns]
        return client, transports

    client, transports = asyncio.run(open_one())
    assert transports
    assert all(isinstance(t, _SELECTOR_TRANSPORT) for t in transports)
    assert client._closed is False
    mongo_driver.close_client_without_loop(client)
    assert client._closed is True
    assert all(t.is_closing() and t._sock is None for t in transports)
    del client, transports
    assert not [w for w in _collected_warnings() if "Unclosed AsyncMongoClient" in w]


@pytest.mark.mongo
@MONGO_DRIVERS
async def test_pymongo_server_cursor_namespace_and_id(driver: str, mongo_server: Server) -> None:
    """A cursor's `_collection` (a find's and an aggregate's command cursor) and a change stream's
    `_cursor` give the namespace and id a `killCursors` needs, and that command kills it."""
    from connman.backends.drivers import pymongo as mongo_driver

    client = _mongo_client(driver, mongo_server)
    name = f"r_{uuid.uuid4().hex[:10]}"
    db = client.connman
    try:
        await db[name].insert_many([{"n": i} for i in range(6)])
        find = db[name].find({}, batch_size=2)
        assert mongo_driver.server_cursor(find, stream=False) is None  # not started
        await find.next()
        found = mongo_driver.server_cursor(find, stream=False)
        assert found is not None
        assert found[:2] == ("connman", name)
        assert found[2] == find.cursor_id
        reply = await db.command("killCursors", name, cursors=[found[2]])
        assert reply["cursorsKilled"] == [found[2]]

        agg = db[name].aggregate([], batchSize=2)
        agg = await agg if asyncio.iscoroutine(agg) else agg
        await agg.next()
        on_server = mongo_driver.server_cursor(agg, stream=False)
        assert on_server is not None
        assert on_server[:2] == ("connman", name)
        await agg.to_list(None)
        assert mongo_driver.server_cursor(agg, stream=False) is None  # exhausted: none left

        stream = db[name].watch(max_await_time_ms=50)
        stream = await stream if asyncio.iscoroutine(stream) else stream
        try:
            await stream.try_next()
            on_server = mongo_driver.server_cursor(stream, stream=True)
            assert on_server is not None
            assert on_server[1] == name
        finally:
            await stream.close()
    finally:
        await db[name].drop()
        await _close_client(client)


def test_pymongo_csot_and_operation_cancelled() -> None:
    """`pymongo._csot.get_timeout()` is set inside the app's `pymongo.timeout()` block only;
    `_OperationCancelled` is PyMongo's network error for an interrupted operation."""
    import pymongo
    from pymongo.errors import AutoReconnect

    from connman.backends.drivers import pymongo as mongo_driver

    assert mongo_driver.app_deadline() is False
    with pymongo.timeout(5):
        assert mongo_driver.app_deadline() is True
    assert mongo_driver.app_deadline() is False
    assert issubclass(mongo_driver.OPERATION_CANCELLED, AutoReconnect)
    assert mongo_driver.OPERATION_CANCELLED.__module__ == "pymongo.errors"


@pytest.mark.mongo
async def test_motor_is_async_method_marks_its_io_methods(mongo_server: Server) -> None:
    """Motor marks the methods it runs on a worker thread `is_async_method`; the others (which
    return a cursor at once) are not marked."""
    from connman.backends._mongo_calls import is_op

    client = _mongo_client("motor", mongo_server)
    try:
        coll = client.connman.anything
        assert coll.find_one.is_async_method is True
        assert is_op(coll.find_one)
        assert not getattr(coll.find, "is_async_method", False)
        assert not is_op(coll.find)
    finally:
        client.close()


# ------------------------------------------------------------------ Starlette, FastAPI
async def test_starlette_default_lifespan_class_runs_on_event_handlers() -> None:
    """A router given no lifespan has a `_DefaultLifespan` (Starlette's, or FastAPI's own copy),
    which runs the `on_startup`/`on_shutdown` handlers itself; a given lifespan does not."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from starlette.applications import Starlette

    from connman._app import default_lifespans, event_handlers

    assert default_lifespans()
    assert isinstance(Starlette().router.lifespan_context, default_lifespans())
    ran: list[str] = []
    app: Any = FastAPI()
    assert isinstance(app.router.lifespan_context, default_lifespans())
    app.router.on_startup.append(lambda: ran.append("up"))
    app.router.on_shutdown.append(lambda: ran.append("down"))
    assert event_handlers(app) == ([], [])
    async with app.router.lifespan_context(app):
        assert ran == ["up"]
    assert ran == ["up", "down"]

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield

    given: Any = FastAPI(lifespan=lifespan)
    assert not isinstance(given.router.lifespan_context, default_lifespans())
    given.router.on_startup.append(lambda: ran.append("again"))
    startup, shutdown = event_handlers(given)
    assert len(startup) == 1
    assert shutdown == []
    async with given.router.lifespan_context(given):
        assert ran == ["up", "down"]  # a given lifespan does not run them: connman must


def test_starlette_state_dict() -> None:
    """`State._state` is the dict behind `app.state`'s attributes."""
    from fastapi import FastAPI

    from connman._app import state_values

    app = FastAPI()
    marker = object()
    app.state.manager = marker
    assert isinstance(app.state._state, dict)
    assert app.state._state["manager"] is marker
    assert state_values(app) == [marker]
    assert state_values(object()) == []
