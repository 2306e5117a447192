"""Read replicas on a real streaming replica of the throwaway PostgreSQL (pg_basebackup)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text

from connman import ConfigurationError, ConnectionManager, StatementTimeout
from connman._replicas import parse_lsn, record_end
from connman.testing.proxy import TcpProxy
from connman.testing.servers import PostgresReplicaServer, PostgresServer, free_port

from .faults.frozen import frozen

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def replica(postgres_server: PostgresServer) -> Iterator[PostgresReplicaServer]:
    with PostgresReplicaServer(postgres_server) as server:
        yield server


async def in_recovery(db: Any) -> bool:
    return bool((await db.execute(text("SELECT pg_is_in_recovery()"))).scalar())


PG_DRIVERS = pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])


@PG_DRIVERS
async def test_readonly_sessions_read_from_the_replica_and_writes_stay_on_the_primary(
        postgres_server: PostgresServer, replica: PostgresReplicaServer,
        managers: list[ConnectionManager], driver: str) -> None:
    m = ConnectionManager({"main": {"url": postgres_server.url(driver=driver),
                                    "replicas": [replica.url(driver=driver)],
                                    "size": 1, "overflow": 1,
                                    # plain routing: no commit position read after the write
                                    "read_your_writes": "off"}})
    managers.append(m)
    async with m:
        async with m.session("main") as db:
            assert not await in_recovery(db)
            await db.execute(text("DROP TABLE IF EXISTS replicated"))
            await db.execute(text("CREATE TABLE replicated (x int)"))
            await db.execute(text("INSERT INTO replicated VALUES (42)"))
        await asyncio.to_thread(replica.wait_replicated)
        async with m.session("main", readonly=True) as db:
            assert await in_recovery(db)
            assert (await db.execute(text("SELECT x FROM replicated"))).scalar() == 42
        with pytest.raises(Exception, match="read-only transaction"):
            async with m.session("main", readonly=True) as db:
                await db.execute(text("INSERT INTO replicated VALUES (1)"))
        assert m.stats("main.replica1")["requests_num"] == 2
        assert m.stats("main")["requests_num"] == 1
        assert "main.replica1" in m.names


@PG_DRIVERS
async def test_unreachable_replicas_are_skipped_and_the_primary_is_the_last_resort(
        postgres_server: PostgresServer, replica: PostgresReplicaServer,
        managers: list[ConnectionManager], driver: str) -> None:
    dead = f"postgresql+{driver}://postgres:pw@127.0.0.1:{free_port()}/postgres"
    m = ConnectionManager({"main": {"url": postgres_server.url(driver=driver),
                                    "replicas": [dead, replica.url(driver=driver)],
                                    "size": 1, "overflow": 0, "connect_timeout": 1}})
    managers.append(m)
    async with m:  # the dead replica does not stop startup: replicas are not required
        assert m.pool("main.replica1").closed
        for _ in range(4):  # round-robin, skipping the dead one every time
            async with m.session("main", readonly=True) as db:
                assert await in_recovery(db)
        assert m.stats("main.replica2")["requests_num"] == 4
        await asyncio.to_thread(replica.kill)
        try:
            async with m.session("main", readonly=True) as db:  # no replica answers: primary
                assert not await in_recovery(db)
        finally:
            await asyncio.to_thread(replica.restart)


# ---------------------------------------------------------------- down, frozen, lagging replicas
DEADLINE = 60.0  # seconds a wait for a condition may take on a loaded machine before failing


async def read_where(m: ConnectionManager) -> str:
    """Where a readonly unit ran: "replica" or "primary"."""
    async with m.session("main", readonly=True) as db:
        return "replica" if await in_recovery(db) else "primary"


async def until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not await condition():
        assert time.monotonic() < deadline, f"still not {what} after {DEADLINE:g}s"
        await asyncio.sleep(0.05)


def proxied(replica: PostgresReplicaServer, proxy: TcpProxy) -> str:
    return replica.url(driver="asyncpg").replace(f":{replica.port}/", f":{proxy.port}/")


async def test_a_replica_down_at_startup_joins_the_rotation_when_it_answers(
        postgres_server: PostgresServer, replica: PostgresReplicaServer,
        managers: list[ConnectionManager]) -> None:
    with TcpProxy(replica.host, replica.port) as proxy:
        proxy.cut()
        m = ConnectionManager({"main": {"url": postgres_server.url(driver="asyncpg"),
                                        "replicas": [proxied(replica, proxy)],
                                        "size": 1, "overflow": 0, "connect_timeout": 1}})
        managers.append(m)
        async with m:
            assert m.pool("main.replica1").outage is not None  # down, and trying
            assert await read_where(m) == "primary"
            proxy.restore()

            async def on_replica() -> bool:
                return await read_where(m) == "replica"

            await until(on_replica, "reading from the replica")
            assert m.pool("main.replica1").outage is None


async def test_a_frozen_replica_is_left_for_the_primary_and_rejoins_when_it_answers(
        postgres_server: PostgresServer, replica: PostgresReplicaServer,
        managers: list[ConnectionManager]) -> None:
    with TcpProxy(replica.host, replica.port) as proxy:
        m = ConnectionManager({"main": {"url": postgres_server.url(driver="asyncpg"),
                                        "replicas": [proxied(replica, proxy)],
                                        "size": 1, "overflow": 1, "connect_timeout": 1,
                                        "statement_timeout": 2}})
        managers.append(m)
        async with m:
            assert await read_where(m) == "replica"
            proxy.blackhole()  # answers nothing: connects hang, pings get no reply

            async def on_primary() -> bool:
                try:
                    return await read_where(m) == "primary"
                except StatementTimeout:  # a unit already on the frozen replica: marks it down
                    return False

            await until(on_primary, "reading from the primary")
            assert m.pool("main.replica1").outage is not None
            assert await read_where(m) == "primary"  # no wait: it is out of rotation
            proxy.restore()

            async def on_replica() -> bool:
                return await read_where(m) == "replica"

            await until(on_replica, "back on the replica")


@contextlib.asynccontextmanager
async def replay_paused(replica: PostgresReplicaServer) -> AsyncIterator[None]:
    """Replay held back on the replica (as by a conflicting query); resumed and caught up after."""
    conn = await asyncpg.connect(replica.url())
    try:
        await conn.execute("SELECT pg_wal_replay_pause()")
        yield
    finally:
        await conn.execute("SELECT pg_wal_replay_resume()")
        await conn.close()
        await asyncio.to_thread(replica.wait_replicated)


async def write_note(m: ConnectionManager, table: str) -> int:
    async with m.session("main") as db:
        return int((await db.execute(text(f"INSERT INTO {table} DEFAULT VALUES RETURNING id"))
                    ).scalar_one())


async def sees(m: ConnectionManager, table: str, note: int) -> bool:
    async with m.session("main", readonly=True) as db:
        found = await db.execute(text(f"SELECT count(*) FROM {table} WHERE id = :i"), {"i": note})
        return bool(found.scalar_one())


@pytest.fixture
async def notes(postgres_server: PostgresServer, replica: PostgresReplicaServer
                ) -> AsyncIterator[str]:
    table = f"notes_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(postgres_server.url())
    try:
        await conn.execute(f"CREATE TABLE {table} (id serial PRIMARY KEY)")
        await asyncio.to_thread(replica.wait_replicated)
        yield table
    finally:
        await conn.execute(f"DROP TABLE {table}")
        await conn.close()


@pytest.mark.parametrize("mode", ["off", "request", "process"])
async def test_read_your_writes_sees_the_commit_while_the_replica_lags(
        mode: str, postgres_server: PostgresServer, replica: PostgresReplicaServer,
        notes: str, managers: list[ConnectionManager]) -> None:
    m = ConnectionManager({"main": {"url": postgres_server.url(driver="asyncpg"),
                                    "replicas": [replica.url(driver="asyncpg")],
                                    "size": 2, "overflow": 0, "read_your_writes": mode}})
    managers.append(m)
    async with m:
        async with replay_paused(replica):
            note = await write_note(m, notes)
            # The same request (this task): off reads the stale replica, both modes see it.
            assert await sees(m, notes, note) is (mode != "off")
            # Another request (a new task, its own context): only "process" covers it.
            other = await asyncio.create_task(sees(m, notes, note), context=contextvars.Context())
            assert other is (mode == "process")
        # Replayed: under "process" reads go back to the replica once it has the commit.
        assert await read_where(m) == ("primary" if mode == "request" else "replica")


async def test_max_replica_lag_takes_a_lagging_replica_out_until_it_catches_up(
        postgres_server: PostgresServer, replica: PostgresReplicaServer, notes: str,
        managers: list[ConnectionManager]) -> None:
    m = ConnectionManager({"main": {"url": postgres_server.url(driver="asyncpg"),
                                    "replicas": [replica.url(driver="asyncpg")],
                                    "size": 2, "overflow": 0, "max_replica_lag": 0.2}})
    managers.append(m)
    router = m._routers["main"]
    async with m:
        assert await read_where(m) == "replica"
        async with replay_paused(replica):
            note = await write_note(m, notes)

            async def lagging() -> bool:
                return "main.replica1" in router.lagging

            await until(lagging, "out of rotation")
            assert await sees(m, notes, note)  # the primary serves the reads meanwhile
            assert await read_where(m) == "primary"

        async def caught_up() -> bool:
            return "main.replica1" not in router.lagging

        await until(caught_up, "back in rotation")
        assert await read_where(m) == "replica"


def test_read_your_writes_per_process_needs_positions_mariadb_does_not_give() -> None:
    with pytest.raises(ConfigurationError, match="read_your_writes"):
        ConnectionManager({"main": {"url": "mysql+aiomysql://u:pw@db/app",
                                    "replicas": ["mysql+aiomysql://u:pw@replica/app"],
                                    "read_your_writes": "process"}})
    m = ConnectionManager({"main": {"url": "mysql+aiomysql://u:pw@db/app",
                                    "replicas": ["mysql+aiomysql://u:pw@replica/app"],
                                    "read_your_writes": True}})
    assert m.pool("main").config.read_your_writes == "request"


async def test_a_replica_stopped_by_sigstop_is_left_and_rejoins_after_sigcont(
        postgres_server: PostgresServer, replica: PostgresReplicaServer,
        managers: list[ConnectionManager]) -> None:
    m = ConnectionManager({"main": {"url": postgres_server.url(driver="asyncpg"),
                                    "replicas": [replica.url(driver="asyncpg")],
                                    "size": 1, "overflow": 1, "connect_timeout": 1,
                                    "statement_timeout": 2}})
    managers.append(m)
    async with m:
        assert await read_where(m) == "replica"
        with frozen(replica):  # the whole process tree stopped: a hung host

            async def on_primary() -> bool:
                try:
                    return await read_where(m) == "primary"
                except StatementTimeout:  # a unit already on the frozen replica: marks it down
                    return False

            await until(on_primary, "reading from the primary")
            assert m.pool("main.replica1").outage is not None

        async def on_replica() -> bool:
            return await read_where(m) == "replica"

        await until(on_replica, "back on the replica")


def test_an_insert_position_past_a_page_header_is_the_record_end_a_replica_reports() -> None:
    block, segment = 8192, 16 * 1024 * 1024
    assert record_end(parse_lsn("0/3000028"), block, segment) == parse_lsn("0/3000000")  # long
    assert record_end(parse_lsn("0/3002018"), block, segment) == parse_lsn("0/3002000")  # short
    assert record_end(parse_lsn("0/3002060"), block, segment) == parse_lsn("0/3002060")
    assert parse_lsn("16/B374D848") == (0x16 << 32) + 0xB374D848
