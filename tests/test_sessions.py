"""Sessions on every backend: commit, rollback, return on cancel, bounded waits, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from connman import (
    ConfigurationError,
    ConnectionManager,
    PoolClosed,
    PoolStartupError,
    PoolTimeout,
    UnknownPool,
)
from connman.backends.sqlalchemy import LedgerPool

from ._targets import Ops, Target, server_connections, wait_for_count
from .conftest import only

Make = Callable[..., ConnectionManager]


async def test_commit_on_success_is_visible_to_the_next_session(make_manager: Make, ops: Ops) -> None:
    m = make_manager()
    async with m:
        async with m.session("main") as unit:
            await ops.create(unit)
        async with m.session("main") as unit:
            await ops.insert(unit, "a")
        async with m.session("main") as unit:
            assert await ops.keys(unit) == {"a"}
        stats = m.stats("main")
        assert stats["requests_num"] == 3
        assert stats["requests_active"] == 0


@only(kinds=("sql",))  # Mongo sessions yield a database handle: no transaction to roll back
async def test_error_rolls_back_and_returns_the_connection(make_manager: Make, ops: Ops) -> None:
    m = make_manager()
    async with m:
        async with m.session("main") as unit:
            await ops.create(unit)
        with pytest.raises(RuntimeError, match="boom"):
            async with m.session("main") as unit:
                await ops.insert(unit, "lost")
                raise RuntimeError("boom")
        async with m.session("main") as unit:
            assert await ops.keys(unit) == set()
        stats = m.stats("main")
        assert stats["requests_active"] == 0
        assert stats["pool_available"] == stats["pool_size"]


@only(kinds=("mongo",))
async def test_mongo_session_is_the_configured_database(make_manager: Make) -> None:
    m = make_manager(database="other_db")
    async with m, m.session("main") as db:
        assert db.name == "other_db"
    m2 = make_manager()
    async with m2, m2.session("main") as db:
        assert db.name == "connman"  # from the URL path


async def test_exhausted_pool_raises_pool_timeout_naming_the_pool(make_manager: Make,
                                                                  ops: Ops) -> None:
    m = make_manager(size=1, overflow=1, timeout=0.3)
    async with m:
        release = asyncio.Event()

        async def hold() -> None:
            async with m.session("main") as unit:
                await ops.select1(unit)
                await release.wait()

        holders = [asyncio.create_task(hold()) for _ in range(2)]
        while m.stats("main")["requests_active"] < 2:
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        with pytest.raises(PoolTimeout, match="'main'") as info:
            async with m.session("main"):
                pass
        waited = time.monotonic() - t0
        assert info.value.pool == "main"
        assert info.value.retry_after >= 1
        assert 0.25 <= waited < 5  # bounded by `timeout`, never a hang
        release.set()
        await asyncio.gather(*holders)
        stats = m.stats("main")
        assert stats["requests_timeouts"] == 1
        assert stats["requests_errors"] == 1
        async with m.session("main") as unit:  # and it serves again
            await ops.select1(unit)


async def test_cancelled_session_returns_its_connection(make_manager: Make, ops: Ops,
                                                        target: Target) -> None:
    m = make_manager(size=2, overflow=0, timeout=2)
    async with m:
        started = asyncio.Event()

        async def busy() -> None:
            async with m.session("main") as unit:
                started.set()
                await ops.slow(unit, 5)

        tasks = [asyncio.create_task(busy()) for _ in range(2)]
        await started.wait()
        await asyncio.sleep(0.2)
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert m.stats("main")["requests_active"] == 0
        # Both connections are usable again, at once, and the pool did not grow past its max.
        async def use() -> None:
            async with m.session("main") as unit:
                await ops.select1(unit)

        await asyncio.wait_for(asyncio.gather(use(), use()), 5)
        if target.server is not None and target.is_sql:
            # MariaDB finishes a cancelled client's SLEEP() before it drops the thread, so the
            # server-side count may lag by the query's length.
            n = await wait_for_count(target, 2, timeout=8)
            assert n is not None
            assert n <= 2


@only(kinds=("sql",), exclude=("postgres", "postgres-psycopg", "mysql-aiomysql", "mysql-asyncmy"))
@pytest.mark.skipif(
    not hasattr(__import__("aiosqlite").Connection, "stop"),
    reason="aiosqlite < 0.22 (no Connection.stop(), the lowest supported set): a fresh-clone run "
           "saw one handle outlive gc.collect() there; not investigated yet (see issue #5 note)")
async def test_cancelled_sqlite_queries_leave_no_file_handle_open(
        make_manager: Make, target: Target) -> None:
    """Sessions cancelled mid-query, with the garbage collector off: once the pool is closed no
    handle on the database file may remain (sqlite3 keeps one while a statement lives)."""
    assert target.sqlite_dir is not None
    m = make_manager(size=2, overflow=2, timeout=10)
    path = m.pool("main").config.url.get_secret_value().split(":///", 1)[1]
    rng = random.Random(7)
    query = text("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                 "WHERE x < 20000) SELECT count(*) FROM c")

    async def one() -> None:
        async def hold() -> None:
            async with m.session("main") as s:
                await s.execute(query)
                await asyncio.sleep(0.02)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hold(), rng.uniform(0.001, 0.1))

    gc.disable()
    try:
        async with m:
            for _ in range(2):
                await asyncio.gather(*(one() for _ in range(300)))
        assert m.stats("main")["connections_lost"] > 0  # queries were cut short
        # Without connman's release of the cancelled frames, 8-15 stay open here. About one
        # run in 40 still leaves a single one, held by a reference cycle not yet traced, which
        # the garbage collector then frees.
        assert _open_handles(path) <= 1
    finally:
        gc.enable()
    gc.collect()
    # A connection invalidated mid-query is closed by aiosqlite's own thread, after SQLAlchemy's
    # shielded close: on a busy machine that can land a moment after the pool closed. A leaked
    # handle never closes; one being closed does within this wait.
    for _ in range(100):
        if _open_handles(path) == 0:
            break
        await asyncio.sleep(0.05)
    assert _open_handles(path) == 0


def _open_handles(path: str) -> int:
    """File descriptors this process holds on `path`."""
    path = os.path.realpath(path)
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/self/fd/{fd}") == path
    return n


async def test_cancelled_waiter_does_not_take_a_slot(make_manager: Make, ops: Ops) -> None:
    m = make_manager(size=1, overflow=0, timeout=5)
    async with m:
        async with m.session("main") as unit:
            await ops.select1(unit)
            waiter = asyncio.create_task(m.session("main").__aenter__())
            await asyncio.sleep(0.05)
            assert m.stats("main")["requests_waiting"] == 1
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert m.stats("main")["requests_waiting"] == 0
        async with m.session("main") as unit:  # the slot was not lost to the cancelled waiter
            await ops.select1(unit)
        assert m.stats("main")["requests_active"] == 0


def test_unknown_pool_lists_the_known_ones(make_manager: Make) -> None:
    m = make_manager()
    with pytest.raises(UnknownPool, match=r"no pool named 'nope'; known pools: 'main'"):
        m.session("nope")
    with pytest.raises(UnknownPool):
        m.native("nope")


@only(exclude=("sqlite",))  # SQLite has no server-side connection count
async def test_startup_warms_size_connections_and_shutdown_leaves_none(
        make_manager: Make, target: Target) -> None:
    baseline = await server_connections(target)
    m = make_manager(size=3, overflow=2)
    async with m:
        stats = m.stats("main")
        assert stats["pool_size"] >= 3
        if target.is_sql:
            assert await wait_for_count(target, (baseline or 0) + 3) == (baseline or 0) + 3
    assert m.stats("main")["pool_size"] == 0
    if target.is_sql:
        assert await wait_for_count(target, baseline or 0) == baseline


@only(exclude=("sqlite",))  # SQLite opens any path
async def test_startup_failure_names_the_pool_and_closes_the_others(
        managers: list[ConnectionManager], target: Target) -> None:
    from ._targets import free_port

    assert target.server is not None
    dead = free_port()
    good = target.config()
    bad_url = good["url"].replace(f":{target.server.port}/", f":{dead}/")
    if target.is_sql:
        bad_url = bad_url.replace("://", "://user:s3cr3t-pw@", 1) if "@" not in bad_url else (
            bad_url.replace("@", ":s3cr3t-pw@", 1))
    assert str(dead) in bad_url
    m = ConnectionManager({"good": good, "bad": {**good, "url": bad_url, "connect_timeout": 1}})
    managers.append(m)
    t0 = time.monotonic()
    with pytest.raises(PoolStartupError, match="'bad'") as info:
        await m.open()
    assert time.monotonic() - t0 < 5
    assert "s3cr3t-pw" not in str(info.value)
    assert m.pool("good").closed
    assert m.pool("bad").closed
    with pytest.raises(PoolClosed):
        async with m.session("good"):
            pass


async def test_shutdown_waits_for_held_sessions(make_manager: Make, ops: Ops) -> None:
    m = make_manager(drain_timeout=5)
    await m.open()
    done = asyncio.Event()

    async def work() -> None:
        async with m.session("main") as unit:
            await ops.select1(unit)
            await asyncio.sleep(0.3)
            await ops.select1(unit)  # still usable while the manager drains
        done.set()

    task = asyncio.create_task(work())
    await asyncio.sleep(0.05)
    await m.close()
    assert done.is_set()
    await task
    with pytest.raises(PoolClosed):
        async with m.session("main"):
            pass


async def test_native_objects_match_the_mapping(make_manager: Make, target: Target) -> None:
    m = make_manager(size=3, overflow=4, timeout=7, recycle=120, idle=60, connect_timeout=3)
    async with m:
        native: Any = m.native("main")
        if target.is_sql:
            pool = native.sync_engine.pool
            # connman's own ledger, with room for size + overflow: connman closes the surplus
            # once idle (overflow_idle).
            assert isinstance(pool, LedgerPool)
            assert pool.size() == 7
            assert pool.overflow() == 3 - 7  # the warm-up opened `size`
            assert pool.timeout() == 8.0  # gate timeout + 1 s, as configured
            assert pool._recycle == 120
            assert pool._pre_ping is True
        else:
            opts = native.options.pool_options if target.driver == "pymongo" else (
                native.delegate.options.pool_options)
            assert opts.min_pool_size == 3
            assert opts.max_pool_size == 7
            assert opts.max_idle_time_seconds == 60
            assert opts.wait_queue_timeout == 8.0
            assert opts.connect_timeout == 3.0


@only(kinds=("sql",))
async def test_on_connect_runs_for_every_connection_including_the_warmed_ones(
        make_manager: Make, ops: Ops) -> None:
    m = make_manager(size=3, overflow=1)
    seen: list[Any] = []
    m.on_connect("main", lambda dbapi_conn, record: seen.append(dbapi_conn))
    async with m:
        assert len(seen) == 3
        async with m.session("main") as unit:
            await ops.select1(unit)
        with pytest.raises(RuntimeError, match="already open"):
            m.on_connect("main", lambda c, r: None)
    assert len(seen) == m.stats("main")["connections_num"]


@only(kinds=("mongo",))
def test_on_connect_is_for_sql_pools(make_manager: Make) -> None:
    with pytest.raises(TypeError, match="on_connect is for SQL pools"):
        make_manager().on_connect("main", lambda c, r: None)


@only(kinds=("sql",), exclude=("sqlite",))
async def test_a_session_outliving_the_drain_deadline_closes_its_connection(
        make_manager: Make, ops: Ops, target: Target) -> None:
    baseline = await server_connections(target)
    m = make_manager(size=1, overflow=0, drain_timeout=0.2)
    await m.open()
    release = asyncio.Event()

    async def hold() -> None:
        async with m.session("main") as unit:
            await ops.select1(unit)
            await release.wait()

    task = asyncio.create_task(hold())
    while m.stats("main")["requests_active"] < 1:
        await asyncio.sleep(0.01)
    await m.close()  # gives up on the held session after 0.2 s and disposes the engine
    release.set()
    await task
    assert await wait_for_count(target, baseline or 0) == baseline


@pytest.mark.parametrize("key", ["poolclass", "pool"])
def test_a_pool_class_of_its_own_in_options_is_refused(tmp_path: Any, key: str) -> None:
    # connman keeps the connections in its own pool class, the one the gate admits checkouts to.
    from sqlalchemy.pool import NullPool

    value: Any = NullPool if key == "poolclass" else object()
    with pytest.raises(ConfigurationError, match=rf"pool 'main': options\['{key}'\]: connman keeps"):
        ConnectionManager({"main": {"url": f"sqlite+aiosqlite:///{tmp_path}/p.db",
                                    "options": {key: value}}})
