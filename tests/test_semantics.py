"""Same words, same behaviour: recycle, idle, max_waiting, leaks, fairness, reconnect, stats, events.

Each runs on every backend it applies to, against the real server, with short durations.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from connman import STAT_KEYS, ConnectionManager, PoolEvent, TooManyWaiters
from connman.testing.servers import _alive

from ._targets import Ops, Target
from .conftest import only

Make = Callable[..., ConnectionManager]


async def connection_identity(target: Target, unit: Any) -> Any:
    """Which server connection a SQL session runs on (None for Mongo)."""
    if not target.is_sql:
        return None
    if target.is_postgres:
        return (await unit.execute(text("SELECT pg_backend_pid()"))).scalar()
    if target.driver in ("aiomysql", "asyncmy"):
        return (await unit.execute(text("SELECT CONNECTION_ID()"))).scalar()
    conn = await unit.connection()
    raw = await conn.get_raw_connection()
    return id(raw.driver_connection)


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_recycle_closes_old_connections_instead_of_reusing_them(
        make_manager: Make, ops: Ops, target: Target) -> None:
    m = make_manager(size=1, overflow=0, recycle=0.4, recycle_jitter=0.2, idle=None)
    async with m:
        async with m.session("main") as unit:
            await ops.select1(unit)
            first = await connection_identity(target, unit)
        await asyncio.sleep(0.5)
        async with m.session("main") as unit:
            await ops.select1(unit)
            second = await connection_identity(target, unit)
        if target.is_sql:
            assert first != second
        assert await eventually(lambda: m.stats("main")["connections_recycled"] >= 1)
        assert await eventually(lambda: m.stats("main")["pool_size"] >= 1)  # refilled


def test_recycle_jitter_spreads_lifetimes() -> None:
    from connman._pool import jittered_lifetime

    lives = [jittered_lifetime(100.0, 0.05) for _ in range(500)]
    assert all(95.0 <= x <= 100.0 for x in lives)
    assert max(lives) - min(lives) > 3.0  # spread, so a pool opened at once does not expire at once
    assert jittered_lifetime(100.0, 0.0) == 100.0


async def test_idle_connections_are_closed_instead_of_reused(
        make_manager: Make, ops: Ops, target: Target) -> None:
    m = make_manager(size=1, overflow=0, idle=0.3, recycle=None)
    async with m:
        async with m.session("main") as unit:
            await ops.select1(unit)
            first = await connection_identity(target, unit)
        await asyncio.sleep(0.45)
        async with m.session("main") as unit:
            await ops.select1(unit)
            second = await connection_identity(target, unit)
        if target.is_sql:
            assert first != second
        assert await eventually(lambda: m.stats("main")["connections_idle_closed"] >= 1)
        assert await eventually(lambda: m.stats("main")["pool_size"] >= 1)  # refilled to size


async def test_max_waiting_refuses_at_once(make_manager: Make, ops: Ops) -> None:
    m = make_manager(size=1, overflow=0, timeout=5, max_waiting=2)
    async with m:
        release = asyncio.Event()

        async def hold() -> None:
            async with m.session("main") as unit:
                await ops.select1(unit)
                await release.wait()

        holder = asyncio.create_task(hold())
        assert await eventually(lambda: m.stats("main")["requests_active"] == 1)
        waiters = [asyncio.create_task(hold()) for _ in range(2)]
        assert await eventually(lambda: m.stats("main")["requests_waiting"] == 2)
        t0 = time.perf_counter()
        with pytest.raises(TooManyWaiters, match="'main'"):
            async with m.session("main"):
                pass
        assert time.perf_counter() - t0 < 0.5  # refused at once, not after `timeout`
        release.set()
        await asyncio.gather(holder, *waiters)
        stats = m.stats("main")
        assert stats["requests_rejected"] == 1
        assert stats["requests_num"] == 3


async def test_leak_warning_names_pool_time_and_checkout_stack(
        make_manager: Make, ops: Ops, caplog: pytest.LogCaptureFixture) -> None:
    m = make_manager(leak_threshold=0.1)
    async with m:
        with caplog.at_level(logging.WARNING, logger="connman"):
            async with m.session("main") as unit:
                await ops.select1(unit)
                await asyncio.sleep(0.3)
            async with m.session("main") as unit:  # short: no warning
                await ops.select1(unit)
        leaks = [r for r in caplog.records if "leak_threshold" in r.getMessage()]
        assert len(leaks) == 1
        message = leaks[0].getMessage()
        assert "pool 'main'" in message
        assert "held for 0." in message
        assert "test_leak_warning_names_pool_time_and_checkout_stack" in message
        assert m.stats("main")["leaks_detected"] == 1


async def test_waiters_are_served_in_arrival_order(make_manager: Make, ops: Ops) -> None:
    """50 tasks on a pool of 10: slots are granted exactly in arrival order, so no task starves.

    Checked on the order itself rather than on wait-time percentiles, which one slow server
    response (a checkpoint, a GC pause) can move without any unfairness.
    """
    m = make_manager(size=10, overflow=0, timeout=30)
    total = 1000
    arrivals, grants = itertools.count(), itertools.count()
    order: list[tuple[int, int]] = []
    async with m:
        waits: list[float] = []
        m.on("checkout", lambda e: waits.append(e.duration_ms))
        done = [0] * 50
        remaining = [total]

        async def worker(i: int) -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                arrived = next(arrivals)  # no await between this and joining the queue
                async with m.session("main") as unit:
                    order.append((arrived, next(grants)))
                    await ops.select1(unit)
                done[i] += 1

        await asyncio.gather(*(worker(i) for i in range(50)))
    granted = [g for _, g in sorted(order)]
    overtaken = sum(1 for a, b in itertools.pairwise(granted) if b < a)
    assert overtaken == 0, f"{overtaken} of {len(granted)} grants out of arrival order"
    mean_ops = statistics.mean(done)
    assert min(done) >= 0.5 * mean_ops, done
    assert max(done) <= 2.0 * mean_ops, done
    assert len([w for w in waits if w > 0]) > total / 2  # most of them did queue


@only(kinds=("sql",), exclude=("sqlite",))
async def test_first_request_after_connections_were_killed_succeeds(
        make_manager: Make, ops: Ops, target: Target) -> None:
    m = make_manager(size=2, overflow=0)
    async with m:
        async with m.session("main") as unit:
            await ops.select1(unit)
        # At once: within the 0.5 s in which a just-used connection is not pinged, one whose
        # server hung up is pinged all the same.
        await kill_app_connections(target)
        for _ in range(6):  # pre-ping hands out no dead connection, not even once
            async with m.session("main") as unit:
                await ops.select1(unit)
        assert m.stats("main")["connections_lost"] >= 1


@only(kinds=("sql",), exclude=("sqlite",))
async def test_a_connection_checked_in_within_half_a_second_is_not_pinged_again(
        make_manager: Make, ops: Ops, monkeypatch: pytest.MonkeyPatch) -> None:
    # HikariCP's aliveBypassWindowMs: one round trip fewer per unit of work in a burst.
    m = make_manager(size=1, overflow=0)
    async with m:
        async with m.session("main") as unit:
            adapter = (await (await unit.connection()).get_raw_connection()).dbapi_connection
        sent: list[bool] = []
        if hasattr(type(adapter), "ping"):
            ping = type(adapter).ping  # SQLAlchemy's adapter: what its pre-ping calls

            def counting(self: Any, *args: Any) -> Any:
                sent.append(True)
                return ping(self, *args)

            monkeypatch.setattr(type(adapter), "ping", counting)
        else:
            # psycopg's adapter has no ping: SQLAlchemy's pre-ping executes ";" on a cursor.
            cursor_type = sys.modules[type(adapter).__module__].AsyncAdapt_psycopg_cursor
            execute = cursor_type.execute

            def counting_execute(self: Any, query: Any, *args: Any, **kw: Any) -> Any:
                if query == ";":
                    sent.append(True)
                return execute(self, query, *args, **kw)

            monkeypatch.setattr(cursor_type, "execute", counting_execute)
        for _ in range(3):
            async with m.session("main") as unit:
                await ops.select1(unit)
        assert sent == []  # each checkout came within 0.5 s of the last checkin
        await asyncio.sleep(0.6)
        async with m.session("main") as unit:
            await ops.select1(unit)
        assert sent == [True]


@only(kinds=("mongo",))
async def test_first_request_after_mongo_restart_succeeds(make_manager: Make, ops: Ops,
                                                          target: Target) -> None:
    m = make_manager(size=2, overflow=0)
    async with m:
        async with m.session("main") as unit:
            await ops.select1(unit)
        assert target.server is not None
        await asyncio.to_thread(target.server.restart)
        async with m.session("main") as unit:
            # A read, which PyMongo retries once on a connection that died meanwhile (a restart
            # faster than the heartbeat and the 1 s idle check); `command()` is never retried.
            await unit["t"].find_one({})
        assert m.stats("main")["connections_lost"] >= 1


async def kill_app_connections(target: Target) -> None:
    """Terminate, server-side, every client connection but the killer's own, and wait until the
    server has ended them: both servers only signal the victim, which ends a moment later (on a
    loaded machine, after the client's next pre-ping: a race the test must not depend on)."""
    assert target.server is not None
    if target.is_postgres:
        import asyncpg

        others = ("FROM pg_stat_activity WHERE backend_type = 'client backend' "
                  "AND pid <> pg_backend_pid()")
        conn = await asyncpg.connect(target.server.url())
        try:
            pids = [r[0] for r in await conn.fetch(f"SELECT pid {others}")]
            await conn.execute(f"SELECT pg_terminate_backend(pid) {others}")
            async with asyncio.timeout(10):
                while await conn.fetchval(f"SELECT count(*) {others}"):
                    await asyncio.sleep(0.02)
                # A backend leaves pg_stat_activity before its process exits and its socket
                # closes: until then the client cannot know it hung up.
                while any(_alive(pid) for pid in pids):
                    await asyncio.sleep(0.02)
        finally:
            await conn.close()
        return
    import aiomysql

    others = ("FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() "
              "AND COMMAND <> 'Daemon' AND USER <> 'system user'")
    conn = await aiomysql.connect(host=target.server.host, port=target.server.port, user="root")
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"SELECT ID {others}")
            for (pid,) in await cur.fetchall():
                await cur.execute(f"KILL {int(pid)}")
            async with asyncio.timeout(10):
                while True:
                    await cur.execute(f"SELECT count(*) {others}")
                    row = await cur.fetchone()
                    if not row or not row[0]:
                        break
                    await asyncio.sleep(0.02)
    finally:
        conn.close()


async def test_stats_have_the_same_keys_on_every_backend(make_manager: Make, ops: Ops) -> None:
    m = make_manager(size=2, overflow=1)
    async with m:
        async with m.session("main") as unit:
            await ops.select1(unit)
            live = m.stats("main")
            assert live["requests_active"] == 1
        stats = m.stats("main")
    assert tuple(stats) == STAT_KEYS
    assert all(isinstance(v, int) for v in stats.values())
    assert stats["pool_min"] == 2
    assert stats["pool_max"] == 3
    assert stats["requests_num"] == 1
    assert stats["connections_num"] >= 2
    assert stats["connections_errors"] == 0
    popped = m.pop_stats("main")
    assert popped["requests_num"] == 1
    assert m.stats("main")["requests_num"] == 0
    assert set(m.stats()) == {"main"}


async def test_events_have_the_same_names_on_every_backend(make_manager: Make, ops: Ops) -> None:
    m = make_manager(size=1, overflow=0, timeout=0.2)
    seen: list[PoolEvent] = []
    m.on("*", seen.append)
    async with m, m.session("main") as unit:
        await ops.select1(unit)
        with pytest.raises(TooManyWaiters.__mro__[1]):  # PoolTimeout
            async with m.session("main"):
                pass
    names = {e.name for e in seen}
    assert {"connect", "checkout", "checkin", "timeout", "close"} <= names, names
    assert all(e.pool == "main" for e in seen)
    with pytest.raises(ValueError, match="unknown event"):
        m.on("chekout", seen.append)


def test_repr_shows_each_pool_in_one_line_without_password() -> None:
    m = ConnectionManager({
        "main": "postgresql+asyncpg://app:hunter2@db:5432/app",
        "docs": {"url": "mongodb://u:hunter2@m:27017/app", "size": 1},
    })
    text_ = repr(m)
    assert "hunter2" not in text_
    assert "main sqlalchemy/asyncpg postgresql+asyncpg://app:***@db:5432/app closed" in text_
    assert "[Requests: 0 active, 0 waiting | Connections: 0 open, 0 idle, max 15]" in text_
    assert "docs mongo/pymongo" in text_
