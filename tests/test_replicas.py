"""Read replicas on a real streaming replica of the throwaway PostgreSQL (pg_basebackup)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from connman import ConnectionManager
from connman.testing.servers import PostgresReplicaServer, PostgresServer, free_port

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
                                    "size": 1, "overflow": 1}})
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
