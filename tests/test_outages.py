"""SQL outages end in typed errors and heal: refused (server killed), full, locked, read-only
(a demoted primary), and connections the server ended in use, on the real servers.

The session path (`async with`, `Depends`) and the fast path (`manager.connection()`), asyncpg,
aiomysql, asyncmy and SQLite. Servers that a test kills or demotes are this module's own, so the
shared ones stay untouched.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from fastapi import Depends, FastAPI
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from connman import (
    ConfigurationError,
    ConnectionLost,
    ConnectionManager,
    ConnmanError,
    ServerUnavailable,
    StatementTimeout,
)
from connman.backends._pooler import session_state
from connman.testing.proxy import TcpProxy
from connman.testing.servers import MariaDBServer, PgBouncerServer, PostgresServer, Server

from .test_semantics import eventually

SERVER_DRIVERS = [pytest.param("asyncpg", marks=pytest.mark.postgres, id="postgres"),
                  pytest.param("aiomysql", marks=pytest.mark.mysql, id="mysql-aiomysql"),
                  pytest.param("asyncmy", marks=pytest.mark.mysql, id="mysql-asyncmy")]


def keeps_driver_class(error: BaseException) -> bool:
    """Whether a typed error is still an instance of a driver's (or SQLAlchemy's, or the OS's)
    exception class, not only connman's."""
    return any(not issubclass(cls, ConnmanError) and cls not in (Exception, BaseException, object)
               for cls in type(error).__mro__)


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def own_mariadb() -> Iterator[MariaDBServer]:
    server = MariaDBServer().start()
    yield server
    server.stop()


def own_server(driver: str, request: pytest.FixtureRequest) -> Server:
    name = "own_postgres" if driver == "asyncpg" else "own_mariadb"
    server: Server = request.getfixturevalue(name)
    return server


def app_for(m: ConnectionManager, sql: str = "SELECT 1") -> FastAPI:
    app = FastAPI()

    @app.get("/q")
    async def q(db: Any = Depends(m.session("main"))) -> dict[str, int]:
        await db.execute(text(sql))
        return {"ok": 1}

    return app


@pytest.fixture
async def managers() -> AsyncIterator[list[ConnectionManager]]:
    made: list[ConnectionManager] = []
    yield made
    for m in made:
        await m.close()


async def fast_execute(m: ConnectionManager, driver: str, sql: str) -> None:
    async with m.connection("main") as conn:
        if driver in ("asyncpg", "aiosqlite"):
            await conn.execute(sql)
            if driver == "aiosqlite":
                await conn.commit()
        else:
            async with conn.cursor() as cur:
                await cur.execute(sql)
            await conn.commit()


async def session_execute(m: ConnectionManager, sql: str) -> None:
    async with m.session("main") as db:
        await db.execute(text(sql))


# ------------------------------------------------------------------ refused: a killed server
@pytest.mark.parametrize("driver", SERVER_DRIVERS)
async def test_killed_server_is_a_typed_503_and_the_pool_heals(
        driver: str, request: pytest.FixtureRequest, managers: list[ConnectionManager]) -> None:
    server = own_server(driver, request)
    m = ConnectionManager({"main": {"url": server.url(driver=driver), "size": 2, "overflow": 1,
                                    "timeout": 3, "connect_timeout": 3}})
    managers.append(m)
    app = app_for(m)
    transport = httpx.ASGITransport(app=app)
    async with m, httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        assert (await client.get("/q")).status_code == 200
        await asyncio.to_thread(server.kill)
        try:
            # Through Depends: 503 every time; once the pool saw its connections gone, every
            # refused connect is ServerUnavailable with Retry-After (nothing ran).
            answers = [await client.get("/q") for _ in range(3)]
            assert [r.status_code for r in answers] == [503, 503, 503]
            assert "retry-after" in answers[-1].headers
            with pytest.raises(ServerUnavailable) as info:
                await session_execute(m, "SELECT 1")
            err = info.value
            assert err.kind == "unreachable"
            assert err.pool == "main"
            assert err.retry_after >= 1
            # Still what the app caught without connman: SQLAlchemy's or the OS's error.
            assert isinstance(err, (sa_exc.DBAPIError, OSError))
            with pytest.raises(ServerUnavailable) as fast:
                await fast_execute(m, driver, "SELECT 1")
            assert fast.value.kind == "unreachable"
            assert keeps_driver_class(fast.value)
            stats = m.stats("main")
            assert stats["requests_unavailable"] >= 4
            assert stats["requests_active"] == 0
        finally:
            await asyncio.to_thread(server.start)
        # Healed without a restart of the app.
        async def served() -> bool:
            return (await client.get("/q")).status_code == 200

        deadline = asyncio.get_running_loop().time() + 20
        while not await served():
            assert asyncio.get_running_loop().time() < deadline, "the pool did not heal"
            await asyncio.sleep(0.1)
        await fast_execute(m, driver, "SELECT 1")
        await session_execute(m, "SELECT 1")


# ------------------------------------------------------------------ full: the connection limit
async def _limited_login(driver: str, server: Server) -> str:
    """A login the server lets hold one connection; returns the pool URL for it."""
    name = f"cmfull{uuid.uuid4().hex[:6]}"
    if driver == "asyncpg":
        import asyncpg

        conn = await asyncpg.connect(server.url())
        try:
            await conn.execute(f"CREATE ROLE {name} LOGIN CONNECTION LIMIT 1")
        finally:
            await conn.close()
        return server.url(driver=driver).replace("postgres@", f"{name}@", 1)
    import aiomysql

    mconn = await aiomysql.connect(host=server.host, port=server.port, user="root", db="connman")
    try:
        async with mconn.cursor() as cur:
            await cur.execute(f"CREATE USER '{name}'@'127.0.0.1' WITH MAX_USER_CONNECTIONS 1")
            await cur.execute(f"GRANT ALL ON connman.* TO '{name}'@'127.0.0.1'")
    finally:
        mconn.close()
    return server.url(driver=driver).replace("root@", f"{name}@", 1)


@pytest.mark.parametrize("driver", SERVER_DRIVERS)
async def test_full_server_is_a_typed_503_and_the_pool_keeps_serving(
        driver: str, request: pytest.FixtureRequest, managers: list[ConnectionManager]) -> None:
    shared = request.getfixturevalue("postgres_server" if driver == "asyncpg" else "mysql_server")
    url = await _limited_login(driver, shared)
    m = ConnectionManager({"main": {"url": url, "size": 1, "overflow": 1, "timeout": 3,
                                    "connect_timeout": 3}})
    managers.append(m)
    transport = httpx.ASGITransport(app=app_for(m))
    async with m, httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        async with m.session("main") as held:
            await held.execute(text("SELECT 1"))  # the one connection the login may have
            with pytest.raises(ServerUnavailable) as info:
                await session_execute(m, "SELECT 1")
            assert info.value.kind == "full"
            assert info.value.pool == "main"
            assert keeps_driver_class(info.value)
            with pytest.raises(ServerUnavailable) as fast:
                await fast_execute(m, driver, "SELECT 1")
            assert fast.value.kind == "full"
            assert keeps_driver_class(fast.value)
            r = await client.get("/q")
            assert r.status_code == 503
            assert "retry-after" in r.headers
        # The pool keeps serving on the connection it has.
        assert (await client.get("/q")).status_code == 200
        stats = m.stats("main")
        assert stats["requests_unavailable"] >= 3
        assert stats["requests_active"] == 0


# ------------------------------------------------------------------ locked: SQLite's lock wait
async def test_locked_sqlite_is_a_typed_503_and_nothing_is_committed(
        tmp_path: Path, managers: list[ConnectionManager]) -> None:
    path = tmp_path / "locked.db"
    m = ConnectionManager({"main": {"url": f"sqlite+aiosqlite:///{path}", "size": 2,
                                    "overflow": 1, "timeout": 0.5}})
    managers.append(m)
    transport = httpx.ASGITransport(app=app_for(m, "INSERT INTO t VALUES (2)"))
    async with m, httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        await session_execute(m, "CREATE TABLE t (x int)")
        async with m.session("main") as writer:
            await writer.execute(text("INSERT INTO t VALUES (1)"))  # holds the write lock
            with pytest.raises(ServerUnavailable) as info:
                await session_execute(m, "INSERT INTO t VALUES (2)")
            assert info.value.kind == "locked"
            assert info.value.pool == "main"
            assert isinstance(info.value, sa_exc.OperationalError)
            with pytest.raises(ServerUnavailable) as fast:
                await fast_execute(m, "aiosqlite", "INSERT INTO t VALUES (3)")
            assert fast.value.kind == "locked"
            assert isinstance(fast.value, sqlite3.OperationalError)
            r = await client.get("/q")
            assert r.status_code == 503
            assert "retry-after" in r.headers
        async with m.session("main") as db:
            rows = (await db.execute(text("SELECT x FROM t"))).scalars().all()
        assert rows == [1]  # nothing of the refused writes was committed
        assert m.stats("main")["requests_unavailable"] >= 3


# ------------------------------------------------------------------ ended: the server ended it
async def _terminate_pid(server: Server, pid: int) -> None:
    """Terminate a backend and wait until the server has ended it (it only signals it)."""
    import asyncpg

    conn = await asyncpg.connect(server.url())
    try:
        await conn.execute("SELECT pg_terminate_backend($1)", pid)
        deadline = asyncio.get_running_loop().time() + 10
        while await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_terminated_backend_is_connection_lost(
        postgres_server: Server, managers: list[ConnectionManager]) -> None:
    m = ConnectionManager({"main": {"url": postgres_server.url(driver="asyncpg"), "size": 1,
                                    "overflow": 0, "timeout": 3, "connect_timeout": 3}})
    managers.append(m)
    async with m:
        with pytest.raises(ConnectionLost) as info:
            async with m.session("main") as db:
                pid = (await db.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                await _terminate_pid(postgres_server, pid)
                await db.execute(text("SELECT 1"))
        # Nothing can have been applied (the server rolled the transaction back).
        assert info.value.retry_after is not None
        assert info.value.pool == "main"
        assert isinstance(info.value, sa_exc.DBAPIError)
        # The fast path: asyncpg autocommits, so what was applied is unknown.
        with pytest.raises(ConnectionLost) as fast:
            async with m.connection("main") as conn:
                await _terminate_pid(postgres_server, await conn.fetchval("SELECT pg_backend_pid()"))
                await eventually(lambda: conn.is_closed(), timeout=5)
                await conn.fetchval("SELECT 1")
        assert fast.value.retry_after is None
        # Idle in transaction past the server's timeout: ended, typed the same way.
        with pytest.raises(ConnectionLost):
            async with m.session("main") as db:
                await db.execute(text("SET idle_in_transaction_session_timeout = '100ms'"))
                await db.execute(text("SELECT 1"))
                await asyncio.sleep(0.5)
                await db.execute(text("SELECT 1"))
        # A unit that already committed once: what it applied is kept, so no Retry-After.
        with pytest.raises(ConnectionLost) as committed:
            async with m.session("main") as db:
                await db.execute(text("SELECT 1"))
                await db.commit()
                pid = (await db.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                await _terminate_pid(postgres_server, pid)
                await db.execute(text("SELECT 1"))
        assert committed.value.retry_after is None
        async with m.session("main") as db:  # the pool serves again
            assert (await db.execute(text("SELECT 1"))).scalar_one() == 1
        stats = m.stats("main")
        assert stats["requests_lost"] == 4
        assert stats["requests_active"] == 0


@pytest.mark.postgres
async def test_connection_lost_during_commit_has_no_retry_after(
        postgres_server: Server, managers: list[ConnectionManager]) -> None:
    """A COMMIT cut off: whether it was applied is unknown, so no Retry-After."""
    import asyncpg

    table = f"c_{uuid.uuid4().hex[:8]}"
    raw = await asyncpg.connect(postgres_server.url())
    await raw.execute(f"""
        CREATE TABLE {table} (x int);
        CREATE FUNCTION {table}_slow() RETURNS trigger LANGUAGE plpgsql AS
          $$ BEGIN PERFORM pg_sleep(30); RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER {table}_at_commit AFTER INSERT ON {table}
          DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {table}_slow();""")
    m = ConnectionManager({"main": {"url": postgres_server.url(driver="asyncpg"), "size": 1,
                                    "overflow": 0, "timeout": 3, "connect_timeout": 3}})
    managers.append(m)
    try:
        async with m:
            pids: list[int] = []

            async def unit() -> None:
                async with m.session("main") as db:
                    pids.append((await db.execute(text("SELECT pg_backend_pid()"))).scalar_one())
                    await db.execute(text(f"INSERT INTO {table} VALUES (1)"))
                # the COMMIT runs the deferred trigger, which sleeps

            task = asyncio.create_task(unit())
            deadline = asyncio.get_running_loop().time() + 10
            while True:  # until the COMMIT is inside the trigger's sleep
                if pids and await raw.fetchval(
                        "SELECT wait_event = 'PgSleep' FROM pg_stat_activity WHERE pid = $1",
                        pids[0]):
                    break
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            await raw.execute("SELECT pg_terminate_backend($1)", pids[0])
            with pytest.raises(ConnectionLost) as info:
                await task
            assert info.value.retry_after is None
    finally:
        await raw.execute(f"DROP TABLE {table}; DROP FUNCTION {table}_slow()")
        await raw.close()


@pytest.mark.mysql
@pytest.mark.parametrize("driver", ["aiomysql", "asyncmy"])
async def test_killed_mysql_connection_is_connection_lost(
        driver: str, mysql_server: Server, managers: list[ConnectionManager]) -> None:
    import aiomysql

    m = ConnectionManager({"main": {"url": mysql_server.url(driver=driver), "size": 1,
                                    "overflow": 0, "timeout": 3, "connect_timeout": 3}})
    managers.append(m)

    async def kill(conn_id: int) -> None:
        killer = await aiomysql.connect(host=mysql_server.host, port=mysql_server.port,
                                        user="root", db="connman")
        try:
            async with killer.cursor() as cur:
                await cur.execute(f"KILL {conn_id}")
        finally:
            killer.close()

    async with m:
        with pytest.raises(ConnectionLost) as info:
            async with m.session("main") as db:
                await kill((await db.execute(text("SELECT CONNECTION_ID()"))).scalar_one())
                await db.execute(text("SELECT 1"))
        assert info.value.retry_after is not None
        assert isinstance(info.value, sa_exc.DBAPIError)
        async with m.session("main") as db:
            assert (await db.execute(text("SELECT 1"))).scalar_one() == 1
        assert m.stats("main")["requests_lost"] == 1


# ------------------------------------------------------------------ read-only: demoted primary
async def _pg_read_only(server: Server, on: bool) -> None:
    import asyncpg

    conn = await asyncpg.connect(server.url())
    try:
        if on:
            await conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        else:
            await conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


@pytest.mark.postgres
@pytest.mark.parametrize("path", ["session", "fast"])
async def test_demoted_postgres_primary_discards_its_connections(
        path: str, own_postgres: PostgresServer, postgres_server: Server,
        managers: list[ConnectionManager]) -> None:
    """The pool's address moves to the new primary; the old one stays up, read-only. The first
    refused write is a typed 503; the next one runs on the new primary."""
    import asyncpg

    table = f"d_{uuid.uuid4().hex[:8]}"
    for server in (own_postgres, postgres_server):
        conn = await asyncpg.connect(server.url())
        await conn.execute(f"CREATE TABLE {table} (x int)")
        await conn.close()
    proxy = TcpProxy(own_postgres.host, own_postgres.port).start()
    url = own_postgres.url(driver="asyncpg").replace(f":{own_postgres.port}/", f":{proxy.port}/")
    m = ConnectionManager({"main": {"url": url, "size": 2, "overflow": 0, "timeout": 3,
                                    "connect_timeout": 3}})
    managers.append(m)
    insert = f"INSERT INTO {table} VALUES (1)"

    async def write() -> None:
        if path == "session":
            await session_execute(m, insert)
        else:
            async with m.connection("main") as c1, m.connection("main") as c2:
                await c2.execute("SELECT 1")  # both connections were used on the old primary
                await c1.execute(insert)

    try:
        async with m:
            await write()
            proxy.target_port = postgres_server.port  # the address now leads to the new primary
            await _pg_read_only(own_postgres, True)
            deadline = asyncio.get_running_loop().time() + 10
            while True:  # until the old primary's reload reached the pooled sessions
                try:
                    await write()
                except ServerUnavailable as exc:
                    assert exc.kind == "read_only"
                    assert exc.pool == "main"
                    assert isinstance(exc, (sa_exc.DBAPIError, asyncpg.PostgresError))
                    break
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            await write()  # no connection to the old primary is handed out again
            await write()
            stats = m.stats("main")
            assert stats["requests_unavailable"] == 1
            assert stats["requests_active"] == 0
        conn = await asyncpg.connect(postgres_server.url())
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 2
        await conn.execute(f"DROP TABLE {table}")
        await conn.close()
    finally:
        proxy.stop()
        await _pg_read_only(own_postgres, False)


@pytest.mark.mysql
@pytest.mark.parametrize("path", ["session", "fast"])
@pytest.mark.parametrize("driver", ["aiomysql", "asyncmy"])
async def test_read_only_mariadb_is_a_typed_503_and_its_connections_are_replaced(
        driver: str, path: str, own_mariadb: MariaDBServer,
        managers: list[ConnectionManager]) -> None:
    import aiomysql

    user = f"cmro{uuid.uuid4().hex[:6]}"
    root = await aiomysql.connect(host=own_mariadb.host, port=own_mariadb.port, user="root",
                                  db="connman", autocommit=True)

    async def as_root(sql: str) -> None:
        async with root.cursor() as cur:
            await cur.execute(sql)

    await as_root(f"CREATE USER '{user}'@'127.0.0.1'")  # no SUPER: read_only applies to it
    await as_root(f"GRANT ALL ON connman.* TO '{user}'@'127.0.0.1'")
    await as_root(f"CREATE TABLE {user} (x int)")
    url = own_mariadb.url(driver=driver).replace("root@", f"{user}@", 1)
    m = ConnectionManager({"main": {"url": url, "size": 2, "overflow": 0, "timeout": 3,
                                    "connect_timeout": 3}})
    managers.append(m)
    insert = f"INSERT INTO {user} VALUES (1)"
    try:
        async with m:
            before = m.stats("main")["connections_num"]
            await as_root("SET GLOBAL read_only = 1")
            with pytest.raises(ServerUnavailable) as info:
                if path == "session":
                    await session_execute(m, insert)
                else:
                    await fast_execute(m, driver, insert)
            assert info.value.kind == "read_only"
            assert info.value.pool == "main"
            await as_root("SET GLOBAL read_only = 0")
            if path == "session":
                await session_execute(m, insert)
            else:
                await fast_execute(m, driver, insert)
            stats = m.stats("main")
            # The refused connection was discarded (those opened no later than it are, at their
            # next checkout; one opened after it may serve: it may reach the new primary
            # already). Whether the retry opened a new one depends on which of the two warm-up
            # connections was born first: not asserted.
            assert stats["connections_num"] >= before
            assert stats["connections_lost"] >= 1
            assert stats["requests_unavailable"] == 1
    finally:
        await as_root("SET GLOBAL read_only = 0")
        await as_root(f"DROP TABLE {user}")
        root.close()


# ------------------------------------------------------------------ PgBouncer (transaction mode)
@pytest.fixture(scope="module")
def own_pgbouncer(own_postgres: PostgresServer) -> Iterator[PgBouncerServer]:
    # A client queued for a server connection waits `query_wait_timeout` (120 s by default)
    # before PgBouncer answers that the server is gone: shorter here, as an app behind PgBouncer
    # should set it (or connman's `statement_timeout`).
    bouncer = PgBouncerServer(own_postgres, settings={"query_wait_timeout": "2"}).start()
    yield bouncer
    bouncer.stop()


@pytest.mark.postgres
async def test_killed_server_behind_pgbouncer_is_a_typed_503_and_the_pool_heals(
        own_pgbouncer: PgBouncerServer, own_postgres: PostgresServer,
        managers: list[ConnectionManager]) -> None:
    m = ConnectionManager({"main": {"url": own_pgbouncer.url(driver="asyncpg"), "size": 2,
                                    "overflow": 1, "timeout": 3, "connect_timeout": 3,
                                    "external_pooler": "pgbouncer"}})
    managers.append(m)
    transport = httpx.ASGITransport(app=app_for(m))
    async with m, httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        assert (await client.get("/q")).status_code == 200
        await asyncio.to_thread(own_postgres.kill)
        try:
            # PgBouncer stays up and answers for the server: every request is a typed 503.
            answers = [await client.get("/q") for _ in range(3)]
            assert [r.status_code for r in answers] == [503, 503, 503]
            for _ in range(2):
                with pytest.raises((ServerUnavailable, ConnectionLost)) as info:
                    await session_execute(m, "SELECT 1")
                assert keeps_driver_class(info.value)
                with pytest.raises((ServerUnavailable, ConnectionLost)):
                    await fast_execute(m, "asyncpg", "SELECT 1")
        finally:
            await asyncio.to_thread(own_postgres.start)
        deadline = asyncio.get_running_loop().time() + 20
        while (await client.get("/q")).status_code != 200:
            assert asyncio.get_running_loop().time() < deadline, "the pool did not heal"
            await asyncio.sleep(0.1)
        await fast_execute(m, "asyncpg", "SELECT 1")
        stats = m.stats("main")
        assert stats["requests_unavailable"] + stats["requests_lost"] >= 7


def test_full_reset_behind_a_transaction_pooler_is_refused_at_configuration() -> None:
    with pytest.raises(ConfigurationError) as info:
        ConnectionManager({"main": {"url": "postgresql+asyncpg://u@h/db",
                                    "external_pooler": "pgbouncer", "reset_on_return": "full"}})
    message = str(info.value)
    assert "'main'" in message
    assert "reset_on_return" in message
    assert "pooler" in message


@pytest.mark.parametrize(("sql", "flagged"), [
    ("SET statement_timeout = '5s'", True),
    ("  /* c */ set search_path TO x", True),
    ("SET LOCAL statement_timeout = '5s'", False),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", False),
    ("SELECT set_config('app.user', 'x', false)", True),
    ("SELECT set_config('app.user', 'x', true)", False),
    ("SELECT pg_advisory_lock(1)", True),
    ("SELECT pg_try_advisory_lock_shared(1)", True),
    ("SELECT pg_advisory_xact_lock(1)", False),
    ("CREATE TEMP TABLE t (a int)", True),
    ("CREATE TEMPORARY TABLE t (a int) ON COMMIT DROP", False),
    ("LISTEN channel", True),
    ("SELECT 'SET x'", False),
])
def test_session_state_forms(sql: str, flagged: bool) -> None:
    assert (session_state(sql) is not None) is flagged


@pytest.mark.postgres
@pytest.mark.parametrize("path", ["session", "fast"])
async def test_session_state_behind_pgbouncer_is_warned_once_per_pool(
        path: str, pgbouncer_server: Server, managers: list[ConnectionManager],
        caplog: pytest.LogCaptureFixture) -> None:
    m = ConnectionManager({"main": {"url": pgbouncer_server.url(driver="asyncpg"), "size": 1,
                                    "overflow": 0, "external_pooler": "pgbouncer"}})
    managers.append(m)

    async def run(sql: str) -> None:
        if path == "session":
            await session_execute(m, sql)
        else:
            await fast_execute(m, "asyncpg", sql)

    async with m:
        with caplog.at_level("WARNING", logger="connman"):
            await run("SET LOCAL statement_timeout = '5s'")
            await run("SELECT pg_advisory_xact_lock(7)")
            assert not [r for r in caplog.records if "external_pooler" in r.getMessage()]
            await run("SET statement_timeout = '5s'")
            await run("SELECT pg_advisory_unlock_all()")
            await run("SELECT pg_advisory_lock(7)")
            await run("SELECT pg_advisory_unlock(7)")
        warned = [r.getMessage() for r in caplog.records if "external_pooler" in r.getMessage()]
    assert len(warned) == 1
    assert "'main'" in warned[0]
    assert "SET LOCAL" in warned[0]


@pytest.mark.parametrize("driver", [*SERVER_DRIVERS, pytest.param(
    "psycopg", marks=pytest.mark.postgres, id="postgres-psycopg")])
async def test_statement_timeout_keeps_the_drivers_class(
        driver: str, request: pytest.FixtureRequest, managers: list[ConnectionManager]) -> None:
    postgres = driver in ("asyncpg", "psycopg")
    shared = request.getfixturevalue("postgres_server" if postgres else "mysql_server")
    m = ConnectionManager({"main": {"url": shared.url(driver=driver), "size": 1, "overflow": 0,
                                    "statement_timeout": 0.3}})
    managers.append(m)
    sleep = "SELECT pg_sleep(5)" if postgres else "SELECT SLEEP(5)"
    async with m:
        with pytest.raises(StatementTimeout) as session:
            await session_execute(m, sleep)
        with pytest.raises(StatementTimeout) as fast:
            await fast_execute(m, driver, sleep)
        await session_execute(m, "SELECT 1")
    for error in (session.value, fast.value):
        assert isinstance(error, TimeoutError)
        assert error.pool == "main"
    # What the app's own `except` caught before connman, on each path. asyncpg's deadline is
    # asyncio's TimeoutError, which SQLAlchemy passes on unwrapped; the others' connection,
    # killed at connman's deadline, raises the driver's OperationalError, which a session gets
    # wrapped in SQLAlchemy's.
    if driver == "asyncpg":
        return
    assert isinstance(session.value, sqlalchemy.exc.OperationalError)
    if driver == "psycopg":
        import psycopg

        assert isinstance(fast.value, psycopg.OperationalError)
    elif driver == "aiomysql":
        import pymysql

        assert isinstance(fast.value, pymysql.err.OperationalError)
    else:
        import asyncmy

        try:
            type("Both", (StatementTimeout, asyncmy.errors.OperationalError), {})
        except TypeError as exc:
            # asyncmy >= 0.2.10's compiled exception classes cannot share an instance with
            # TimeoutError (CPython: "multiple bases have instance lay-out conflict"): its fast
            # path's timeout is connman's alone, with asyncmy's error as the cause.
            assert "lay-out conflict" in str(exc)
            assert isinstance(fast.value.__cause__, asyncmy.errors.OperationalError)
        else:
            assert isinstance(fast.value, asyncmy.errors.OperationalError)


@pytest.mark.postgres
async def test_demoted_primary_with_a_multi_host_url_moves_to_the_writable_host(
        own_postgres: PostgresServer, postgres_server: Server,
        managers: list[ConnectionManager]) -> None:
    """asyncpg's `target_session_attrs=read-write` (a URL parameter) checks each new connection
    accepts writes, trying the URL's hosts in turn: once the pool dropped its connections to the
    demoted host, new ones land on the writable one."""
    import asyncpg

    table = f"m_{uuid.uuid4().hex[:8]}"
    for server in (own_postgres, postgres_server):
        conn = await asyncpg.connect(server.url())
        await conn.execute(f"CREATE TABLE {table} (x int)")
        await conn.close()
    hosts = "&".join(f"host={s.host}:{s.port}" for s in (own_postgres, postgres_server))
    url = f"postgresql+asyncpg://postgres@/postgres?{hosts}&target_session_attrs=read-write"
    m = ConnectionManager({"main": {"url": url, "size": 2, "overflow": 0, "timeout": 3,
                                    "connect_timeout": 3}})
    managers.append(m)
    insert = f"INSERT INTO {table} VALUES (1)"
    try:
        async with m:
            await session_execute(m, insert)  # on the first host, writable then
            await _pg_read_only(own_postgres, True)
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                try:
                    await session_execute(m, insert)
                except ServerUnavailable as exc:
                    assert exc.kind == "read_only"
                    break
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            await session_execute(m, insert)
            await session_execute(m, insert)
        conn = await asyncpg.connect(postgres_server.url())
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 2
        await conn.execute(f"DROP TABLE {table}")
        await conn.close()
    finally:
        await _pg_read_only(own_postgres, False)
