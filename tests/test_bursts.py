"""Bursts without reconnect storms: connections above `size` stay open while bursts keep coming,
and are closed once idle for `overflow_idle`, down to `size`, on every backend and both paths.

On the real servers: the stats (`connections_num`, `connections_idle_closed`, `pool_size`) and,
where the server can tell, its own count of client connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from connman import ConnectionManager

from ._targets import Ops, Target, server_connections, wait_for_count
from .conftest import only
from .test_semantics import eventually

Make = Callable[..., ConnectionManager]
SIZE, OVERFLOW = 2, 4
MAX = SIZE + OVERFLOW
HOLD_S = 0.15
"""How long each unit of a burst keeps its connection busy: long enough that all MAX overlap."""


@pytest.fixture
def app_name() -> str:
    """This test's Mongo `appname`: the failpoint and the server-side count see only its pools."""
    return f"bursts-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make(make_manager: Make, target: Target, app_name: str) -> Make:
    """`make_manager`, with this test's app name on Mongo pools."""
    def build(**fields: Any) -> ConnectionManager:
        if not target.is_sql:
            fields["options"] = {"appname": app_name}
        return make_manager(**fields)

    return build


@pytest.fixture(autouse=True)
async def slow_mongo_finds(target: Target, app_name: str) -> AsyncIterator[None]:
    """Mongo: the server holds each `find` of this test's pools HOLD_S (a `failCommand` failpoint
    with `blockConnection`), so a burst keeps MAX driver connections busy at once."""
    if target.is_sql:
        yield
        return
    from pymongo import AsyncMongoClient

    client: Any = AsyncMongoClient(target.url(), serverSelectionTimeoutMS=5000)
    point = {"configureFailPoint": "failCommand"}
    try:
        await client.admin.command({**point, "mode": "alwaysOn", "data": {
            "appName": app_name, "failCommands": ["find"], "blockConnection": True,
            "blockTimeMS": int(HOLD_S * 1000)}})
        yield
    finally:
        with contextlib.suppress(Exception):
            await client.admin.command({**point, "mode": "off"})
        await client.close()


async def hold(target: Target, ops: Ops, unit: Any) -> None:
    """Keep the unit's connection busy on the server for HOLD_S."""
    if target.is_sql:
        await ops.slow(unit, HOLD_S)
    else:
        await unit[ops.table].find_one({})


async def burst(m: ConnectionManager, target: Target, ops: Ops, *, fast: bool = False,
                n: int = MAX) -> None:
    """`n` units of work at once, each keeping a connection busy on the server for HOLD_S."""
    async def one() -> None:
        if fast and target.is_sql:
            async with m.connection("main") as conn:
                await _driver_sleep(target, conn, HOLD_S)
        elif fast:  # Mongo's fast path is the database handle
            async with m.connection("main") as db:
                await hold(target, ops, db)
        else:
            async with m.session("main") as unit:
                await hold(target, ops, unit)

    await asyncio.gather(*(one() for _ in range(n)))


async def _driver_sleep(target: Target, conn: Any, seconds: float) -> None:
    if target.is_postgres:
        await conn.execute(f"SELECT pg_sleep({seconds})")
    elif target.driver == "aiosqlite":
        await conn.execute("SELECT 1")
        await asyncio.sleep(seconds)
    else:
        async with conn.cursor() as cur:
            await cur.execute(f"SELECT SLEEP({seconds})")
        await conn.rollback()


async def app_connections(target: Target, app_name: str) -> int | None:
    """The pool's connections as the server sees them: PostgreSQL/MariaDB, all clients but the
    check's own (tests/_targets.py); SecantusDB, one `currentOp` entry per connection of the app
    (its client's monitoring connections included); SQLite: None."""
    if target.is_sql:
        return await server_connections(target)
    from pymongo import AsyncMongoClient

    client: Any = AsyncMongoClient(target.url(), appname="connman-bursts-check",
                                   serverSelectionTimeoutMS=5000)
    try:
        inprog = (await client.admin.command("currentOp"))["inprog"]
    finally:
        await client.close()
    return sum(1 for op in inprog if op.get("type") == "op" and (
        (op.get("clientMetadata") or {}).get("application") or {}).get("name") == app_name)


async def settled(target: Target, app_name: str, expected: int, timeout: float = 10.0
                  ) -> int | None:
    """Poll `app_connections` until it equals `expected` (or time runs out)."""
    deadline = time.monotonic() + timeout
    n = await app_connections(target, app_name)
    while n is not None and n != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        n = await app_connections(target, app_name)
    return n


def opened(m: ConnectionManager) -> int:
    return m.stats("main")["connections_num"]


def fast_params() -> Any:
    return pytest.mark.parametrize("fast", [False, True], ids=["session", "fast"])


@only()
async def test_warm_up_opens_size_and_the_gauges_keep_their_meaning(
        make: Make, target: Target) -> None:
    m = make(size=SIZE, overflow=OVERFLOW)
    async with m:
        if not target.is_sql:
            # PyMongo opens two at a time and may serve the warm-up pings on fewer connections;
            # its minPoolSize fill opens the rest in the background.
            assert await eventually(lambda: m.stats("main")["connections_num"] == SIZE, 10.0)
        stats = m.stats("main")
        assert stats["connections_num"] == SIZE
        assert (stats["pool_min"], stats["pool_max"]) == (SIZE, MAX)
        assert stats["pool_size"] == SIZE
        if target.is_sql:
            options = m.pool("main").driver_options()
            assert (options["pool_size"], options["max_overflow"]) == (MAX, 0)
            assert options["pool_use_lifo"] is True


@only()
@fast_params()
async def test_bursts_within_the_idle_window_open_no_connection(
        make: Make, target: Target, ops: Ops, fast: bool, app_name: str) -> None:
    baseline = await server_connections(target)
    m = make(size=SIZE, overflow=OVERFLOW, overflow_idle=60.0)
    async with m:
        await burst(m, target, ops, fast=fast)
        after_first = opened(m)
        assert after_first == MAX  # size warmed at open, overflow opened by the burst
        seen = await app_connections(target, app_name)  # server side (Mongo: monitors too)
        for _ in range(4):
            await asyncio.sleep(0.05)
            await burst(m, target, ops, fast=fast)
            assert opened(m) == after_first  # nothing reopened
            assert await app_connections(target, app_name) == seen
        stats = m.stats("main")
        assert stats["connections_closed"] == 0
        assert stats["pool_size"] == MAX
        assert stats["requests_errors"] == 0
        if baseline is not None:
            assert await wait_for_count(target, baseline + MAX) == baseline + MAX
    if baseline is not None:
        assert await wait_for_count(target, baseline) == baseline  # shutdown closed them all


@only()
@fast_params()
async def test_the_surplus_is_closed_once_idle_and_size_is_kept(
        make: Make, target: Target, ops: Ops, fast: bool, app_name: str) -> None:
    idle_s = 0.5
    baseline = await server_connections(target)
    m = make(size=SIZE, overflow=OVERFLOW, overflow_idle=idle_s)
    async with m:
        began = time.monotonic()  # no connection of the burst was checked in before this
        await burst(m, target, ops, fast=fast)
        peak = await app_connections(target, app_name)
        if m.stats("main")["connections_closed"]:
            peak = None  # a loaded machine took longer than idle_s to count: no reference point
        # Generous bound for a loaded machine; the promise is overflow_idle + one period (0.05 s).
        assert await eventually(lambda: m.stats("main")["pool_size"] == SIZE, 20.0)
        # None closed before it was idle that long: its last checkin was after `began` (the
        # burst's end is not a bound: a connection may have been checked in for the last time
        # before the other requests of the burst ended).
        assert time.monotonic() - began >= idle_s
        stats = m.stats("main")
        assert stats["connections_idle_closed"] == OVERFLOW
        assert stats["connections_closed"] == OVERFLOW
        assert stats["connections_num"] == MAX
        if baseline is not None:
            assert await wait_for_count(target, baseline + SIZE) == baseline + SIZE
        if peak is not None:  # the server saw the surplus go, and only the surplus
            assert await settled(target, app_name, peak - OVERFLOW) == peak - OVERFLOW
        await asyncio.sleep(5 * idle_s)  # the floor stays: nothing below size is ever closed
        assert m.stats("main")["pool_size"] == SIZE
        assert m.stats("main")["connections_closed"] == OVERFLOW
        # The next burst opens the overflow again, and still no more than the maximum.
        await burst(m, target, ops, fast=fast)
        assert opened(m) == MAX + OVERFLOW
        if baseline is not None:
            assert await server_connections(target) == baseline + MAX


@only()
async def test_a_light_load_after_a_burst_still_shrinks_to_size(
        make: Make, target: Target, ops: Ops) -> None:
    # One unit at a time reuses the most recently used connection (LIFO), so the others go idle
    # and are closed; a FIFO pool would rotate through all of them and keep every one open.
    m = make(size=SIZE, overflow=OVERFLOW, overflow_idle=0.5)
    async with m:
        await burst(m, target, ops)
        deadline = time.monotonic() + 20.0
        while m.stats("main")["pool_size"] > SIZE and time.monotonic() < deadline:
            async with m.session("main") as unit:
                await ops.select1(unit)
            await asyncio.sleep(0.01)
        stats = m.stats("main")
        assert stats["pool_size"] == SIZE
        assert stats["connections_idle_closed"] == OVERFLOW
        assert stats["requests_errors"] == 0


@only()
async def test_recycle_and_idle_still_hold_for_kept_connections(
        make: Make, target: Target, ops: Ops) -> None:
    m = make(size=SIZE, overflow=OVERFLOW, overflow_idle=60.0, recycle=1.0,
                     recycle_jitter=0.0)
    # How many connections a burst opens above `size` is the driver's doing: up to OVERFLOW,
    # fewer when PyMongo (two connects at a time) is slow to connect on a loaded machine and its
    # waiting units reuse the first ones. The claims are about those it did open.
    async with m:
        await burst(m, target, ops)
        surplus = m.stats("main")["connections_num"] - SIZE
        assert surplus > 0
        await asyncio.sleep(1.2)  # every connection is now past its lifetime
        await burst(m, target, ops)
        stats = m.stats("main")
        # Each one the second burst needed was replaced, none handed out past `recycle`.
        assert stats["connections_recycled"] >= surplus
        assert stats["requests_errors"] == 0
    m = make(size=SIZE, overflow=OVERFLOW, overflow_idle=60.0, idle=0.5)
    async with m:
        await burst(m, target, ops)
        surplus = m.stats("main")["connections_num"] - SIZE
        assert surplus > 0
        # `idle` caps `overflow_idle`: the surplus is closed after 0.5 s, not 60 s.
        assert await eventually(lambda: m.stats("main")["pool_size"] == SIZE, 20.0)
        assert m.stats("main")["connections_idle_closed"] >= surplus


@only(kinds=("sql",))
async def test_mixed_fast_path_and_sessions_keep_the_maximum(
        make: Make, target: Target, ops: Ops) -> None:
    baseline = await server_connections(target)
    m = make(size=SIZE, overflow=OVERFLOW, overflow_idle=60.0)
    async with m:
        await burst(m, target, ops, fast=True)
        await burst(m, target, ops)
        await burst(m, target, ops, fast=True)
        stats = m.stats("main")
        assert stats["connections_num"] == MAX
        assert stats["pool_size"] == MAX
        assert stats["requests_errors"] == 0
        if baseline is not None:
            assert await server_connections(target) == baseline + MAX


@only(kinds=("sql",))
async def test_shutdown_during_shrinking_leaves_nothing_open(
        make: Make, target: Target, ops: Ops) -> None:
    baseline = await server_connections(target)
    m = make(size=SIZE, overflow=OVERFLOW, overflow_idle=0.05)
    async with m:
        await burst(m, target, ops)
        await asyncio.sleep(0.06)  # the maintenance is closing the surplus now
    assert m.stats("main")["pool_size"] == 0
    if baseline is not None:
        assert await wait_for_count(target, baseline) == baseline



@only(kinds=("sql",), exclude=("sqlite",))
async def test_shrinking_while_bursts_arrive_never_exceeds_the_maximum(
        make: Make, target: Target, ops: Ops) -> None:
    # overflow_idle shorter than the gaps: the maintenance closes the surplus between bursts and
    # is still closing when the next one arrives; each close holds a gate slot, so the server
    # never sees more than size + overflow of this pool's connections.
    baseline = await server_connections(target)
    assert baseline is not None
    m = make(size=SIZE, overflow=OVERFLOW, overflow_idle=0.05)
    peak = 0
    stop = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            n = await server_connections(target)
            peak = max(peak, (n or 0) - baseline)
            await asyncio.sleep(0.01)

    async with m:
        watcher = asyncio.create_task(watch())
        try:
            for _ in range(8):
                await burst(m, target, ops)
                await asyncio.sleep(0.08)
        finally:
            stop.set()
            await watcher
        stats = m.stats("main")
        assert stats["connections_idle_closed"] > 0  # it did shrink between bursts
        assert stats["requests_errors"] == 0
    assert 0 < peak <= MAX
