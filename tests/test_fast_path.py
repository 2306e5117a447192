"""The fast path, `manager.connection(name)`: the driver's own connection, from the managed pool.

It keeps the connections it gives back on a stack of its own; these tests hold it to the same
promises as sessions, on the real servers: limits, lifetimes, rollback of what a caller left
open, no leak on cancellation, shrinking back to `size` once idle, and no starving of sessions or health.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from connman import ConnectionManager, PoolTimeout

from ._targets import Ops, Target, server_connections, wait_for_count
from .conftest import only
from .test_semantics import eventually, kill_app_connections

Make = Callable[..., ConnectionManager]
sql_only = only(kinds=("sql",))


async def scalar(target: Target, conn: Any, sql: str) -> Any:
    """First column of the first row of `sql`, in the driver's own API."""
    if target.driver == "asyncpg":
        return await conn.fetchval(sql)
    if target.driver == "aiosqlite":
        async with conn.execute(sql) as cur:
            row = await cur.fetchone()
    else:
        async with conn.cursor() as cur:
            await cur.execute(sql)
            row = await cur.fetchone()
    return None if row is None else row[0]


async def execute(target: Target, conn: Any, sql: str) -> None:
    """Run one statement in the driver's own API, without committing."""
    if target.driver == "asyncpg" or target.driver == "aiosqlite":
        await conn.execute(sql)
    else:
        async with conn.cursor() as cur:
            await cur.execute(sql)


def sleep_sql(target: Target, seconds: float) -> str:
    if target.is_postgres:
        return f"SELECT pg_sleep({seconds})"
    if target.driver in ("aiomysql", "asyncmy"):
        return f"SELECT SLEEP({seconds})"
    # SQLite: a query that keeps its thread busy (a recursive count).
    return ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
            "WHERE x < 30000000) SELECT count(*) FROM c")


DRIVER_MODULE = {"asyncpg": "asyncpg", "psycopg": "psycopg", "aiomysql": "aiomysql", "asyncmy": "asyncmy",
                 "aiosqlite": "aiosqlite"}


@only()
async def test_fast_path_gives_the_drivers_connection_and_counts_it(
        make_manager: Make, target: Target, ops: Ops) -> None:
    m = make_manager(size=2, overflow=0)
    async with m:
        async with m.connection("main") as conn:
            if target.is_sql:
                # A proxy over the driver's own connection, as asyncpg's pool hands out.
                assert type(conn._cm_conn).__module__.split(".")[0] == DRIVER_MODULE[target.driver]
                assert await scalar(target, conn, "SELECT 1") == 1
            else:
                assert conn.name == m.pool("main").database.name
                await ops.select1(conn)
            assert m.stats("main")["requests_active"] == 1
        stats = m.stats("main")
        assert stats["requests_active"] == 0
        assert stats["requests_num"] == 1
        assert stats["pool_size"] <= 2


@sql_only
async def test_fast_path_reuses_its_last_connection(make_manager: Make, target: Target) -> None:
    m = make_manager(size=2, overflow=0)
    async with m:
        async with m.connection("main") as first:
            driver_conn = first._cm_conn
        async with m.connection("main") as second:
            # back from the fast path's own stack, no pool round trip
            assert second._cm_conn is driver_conn
            assert await scalar(target, second, "SELECT 1") == 1
        assert m.stats("main")["pool_available"] == 2


@sql_only
async def test_fast_path_rolls_back_what_the_caller_left_open(
        make_manager: Make, target: Target, ops: Ops) -> None:
    m = make_manager(size=1, overflow=0)
    async with m:
        async with m.session("main") as s:
            await ops.create(s)
        async with m.connection("main") as conn:
            await execute(target, conn, "BEGIN")
            await execute(target, conn, f"INSERT INTO {ops.table} (k, v) VALUES ('left-open', 1)")
            kept = conn._cm_conn
        async with m.connection("main") as conn:
            assert conn._cm_conn is kept  # rolled back and reused, not thrown away
            assert await scalar(target, conn, f"SELECT COUNT(*) FROM {ops.table}") == 0
        async with m.session("main") as s:
            assert await ops.keys(s) == set()
        assert m.stats("main")["connections_lost"] == 0


@sql_only
async def test_fast_path_limits_apply(make_manager: Make, target: Target) -> None:
    m = make_manager(size=1, overflow=0, timeout=0.3)
    async with m:
        async with m.connection("main"):
            with pytest.raises(PoolTimeout):
                async with m.connection("main"):
                    pass
            with pytest.raises(PoolTimeout):
                async with m.session("main"):
                    pass
        assert m.stats("main")["requests_timeouts"] == 2


@sql_only
async def test_sessions_and_health_are_not_starved_by_idle_fast_path_connections(
        make_manager: Make, target: Target, ops: Ops) -> None:
    # size = max: every connection can end up idle on the fast path's stack.
    m = make_manager(size=2, overflow=0, timeout=2.0)
    async with m:
        async def hold() -> None:
            async with m.connection("main") as conn:
                await scalar(target, conn, "SELECT 1")
                await asyncio.sleep(0.05)

        await asyncio.gather(hold(), hold())
        assert m.stats("main")["pool_available"] == 2
        async with asyncio.timeout(1.5):  # well inside the native pool's backstop (timeout + 1)
            async with m.session("main") as s:
                await ops.select1(s)
            assert await m.pool("main").ping() >= 0
            await m.pool("main").server_info()

        async def mixed(i: int) -> None:
            for _ in range(20):
                if i % 2:
                    await hold()
                else:
                    async with m.session("main") as s:
                        await ops.select1(s)

        async with asyncio.timeout(20):
            await asyncio.gather(*(mixed(i) for i in range(6)))
        stats = m.stats("main")
        assert stats["requests_errors"] == 0
        assert stats["requests_active"] == 0
        assert stats["pool_size"] <= 2


@sql_only
async def test_fast_path_shrinks_to_size_once_idle(make_manager: Make, target: Target) -> None:
    baseline = await server_connections(target)
    m = make_manager(size=2, overflow=3, overflow_idle=0.3)
    async with m:
        async def hold() -> None:
            async with m.connection("main") as conn:
                await scalar(target, conn, "SELECT 1")
                await asyncio.sleep(0.1)

        await asyncio.gather(*(hold() for _ in range(5)))  # size + overflow at once
        # The surplus stays until idle for overflow_idle (tests/test_bursts.py), then goes.
        assert await eventually(lambda: m.stats("main")["pool_size"] == 2, 20.0)
        stats = m.stats("main")
        assert stats["pool_available"] == 2
        assert stats["connections_num"] - stats["connections_closed"] == 2
        if baseline is not None:
            assert await wait_for_count(target, baseline + 2) == baseline + 2
    if baseline is not None:
        assert await wait_for_count(target, baseline) == baseline  # close() closed them all


@sql_only
async def test_fast_path_recycles_and_expires_idle_connections(
        make_manager: Make, target: Target) -> None:
    m = make_manager(size=1, overflow=0, recycle=0.3, recycle_jitter=0.0, idle=None)
    async with m:
        async with m.connection("main") as first:
            pass
        await asyncio.sleep(0.4)
        async with m.connection("main") as second:
            assert second is not first
            assert await scalar(target, second, "SELECT 1") == 1
        assert m.stats("main")["connections_recycled"] >= 1
    m = make_manager(size=1, overflow=0, idle=0.2, recycle=None)
    async with m:
        async with m.connection("main") as first:
            pass
        await asyncio.sleep(0.3)
        async with m.connection("main") as second:
            assert second is not first
        assert m.stats("main")["connections_idle_closed"] >= 1


@only(kinds=("sql",), exclude=("sqlite",))
async def test_fast_path_replaces_connections_killed_while_idle(
        make_manager: Make, target: Target) -> None:
    m = make_manager(size=2, overflow=0)
    async with m:
        async with m.connection("main") as conn:
            assert await scalar(target, conn, "SELECT 1") == 1
        # At once: a connection whose server hung up is not trusted, even one used within the
        # last 0.5 s (the driver saw the socket's EOF; no round trip needed).
        await kill_app_connections(target)
        async with m.connection("main") as conn:
            assert await scalar(target, conn, "SELECT 1") == 1
        assert m.stats("main")["requests_errors"] == 0


@sql_only
async def test_cancelled_fast_path_query_leaks_nothing(make_manager: Make, target: Target) -> None:
    baseline = await server_connections(target)
    m = make_manager(size=2, overflow=0, timeout=5.0)
    async with m:
        async def slow() -> None:
            async with m.connection("main") as conn:
                await scalar(target, conn, sleep_sql(target, 3))

        tasks = [asyncio.create_task(slow()) for _ in range(4)]
        await asyncio.sleep(0.3)
        for t in tasks:
            t.cancel()
        t0 = asyncio.get_running_loop().time()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Returned at once, not once the 3 s query ends.
        assert asyncio.get_running_loop().time() - t0 < 1.0
        assert m.stats("main")["requests_active"] == 0
        async with asyncio.timeout(5):
            async with m.connection("main") as conn:
                assert await scalar(target, conn, "SELECT 1") == 1
        if baseline is not None:  # the cancelled queries' server sessions end with them
            deadline = asyncio.get_running_loop().time() + 10
            n = await server_connections(target)
            while n is not None and n > baseline + 2 and (
                    asyncio.get_running_loop().time() < deadline):
                await asyncio.sleep(0.1)
                n = await server_connections(target)
            assert n is not None
            assert n <= baseline + 2
    if baseline is not None:
        assert await wait_for_count(target, baseline, timeout=10) == baseline


@sql_only
@pytest.mark.parametrize("reset", ["rollback", "full"])
async def test_a_fast_path_checkin_cut_by_a_cancel_gives_the_connection_back(
        make_manager: Make, target: Target, reset: str) -> None:
    # The block ends normally with a transaction open, and the task is cancelled as it ends: the
    # check-in's rollback (and, with "full", its reset) is cut. The record used to stay checked
    # out of the ledger with its slot given back: every later fast-path checkout of a pool of 1
    # raised RuntimeError ("a checkout without a gate slot").
    m = make_manager(size=1, overflow=0, timeout=2.0, reset_on_return=reset)
    async with m:
        async def unit() -> None:
            async with m.connection("main") as conn:
                await execute(target, conn, "BEGIN")
                await execute(target, conn, "SELECT 1")
                task = asyncio.current_task()
                assert task is not None
                task.cancel()

        with pytest.raises(asyncio.CancelledError):
            await asyncio.create_task(unit())
        assert m.stats("main")["requests_active"] == 0
        for _ in range(2):
            async with m.connection("main") as conn:
                assert await scalar(target, conn, "SELECT 1") == 1
            async with m.session("main") as s:
                assert (await s.execute(text("SELECT 1"))).scalar() == 1
