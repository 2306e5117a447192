"""Mongo keeps the same promises: the gate sees what the driver holds, lifetimes under load, cursors
cleaned up, fork safety, and an opt-in atomic unit of work. PyMongo and Motor on the Mongo-wire server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
from pymongo import AsyncMongoClient

from connman import (
    ConcurrentUse,
    ConnectionManager,
    PoolTimeout,
    SessionEnded,
    StatementTimeout,
    TransactionConflict,
)

from ._targets import Target
from .conftest import only

Make = Callable[..., ConnectionManager]
mongo_only = only(kinds=("mongo",))


@pytest.fixture
def coll() -> str:
    """A collection name of this test's own."""
    return f"c_{uuid.uuid4().hex[:10]}"


@contextlib.asynccontextmanager
async def admin(target: Target) -> AsyncIterator[Any]:
    """A client of the test's own, outside any pool."""
    client: Any = AsyncMongoClient(target.url())
    try:
        yield client
    finally:
        await client.close()


async def open_cursors(client: Any) -> int:
    status = await client.admin.command("serverStatus")
    return int(status["metrics"]["cursor"]["open"]["total"])


async def no_request_active(m: ConnectionManager, timeout: float = 5.0) -> int:
    """Poll `requests_active` down to 0 (a cleanup may still hold its slot for a moment)."""
    deadline = time.monotonic() + timeout
    while m.stats("main")["requests_active"] and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return m.stats("main")["requests_active"]


async def cursors_back_to(client: Any, baseline: int, timeout: float = 10.0) -> int:
    """Poll the server's open-cursor count until it is back to `baseline` (or time runs out)."""
    deadline = time.monotonic() + timeout
    n = await open_cursors(client)
    while n > baseline and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        n = await open_cursors(client)
    return n


@contextlib.asynccontextmanager
async def failpoint(client: Any, mode: Any, **data: Any) -> AsyncIterator[None]:
    await client.admin.command({"configureFailPoint": "failCommand", "mode": mode, "data": data})
    try:
        yield
    finally:
        await client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})


async def maybe_await(value: Any) -> Any:
    """PyMongo's `aggregate`/`watch` are coroutines; Motor's return a cursor at once."""
    return await value if asyncio.iscoroutine(value) else value


async def fill(client: Any, coll: str, n: int) -> None:
    await client.connman[coll].insert_many([{"n": i, "pad": "x" * 100} for i in range(n)])


# ---------------------------------------------------------------------------- startup


@mongo_only
async def test_open_returns_once_size_connections_are_ready(make_manager: Make) -> None:
    m = make_manager(size=5, overflow=1)
    async with m:
        pool: Any = m.pool("main")
        assert len(pool._listener.ready) >= 5  # CMAP connection_ready, not command replies
        assert m.stats("main")["pool_size"] >= 5
    assert m.stats("main")["pool_size"] == 0


# ---------------------------------------------------------------------------- the gate


@mongo_only
async def test_gather_in_a_session_takes_a_slot_per_concurrent_operation(coll: str,
        make_manager: Make, target: Target) -> None:
    m = make_manager(size=1, overflow=1, timeout=0.5)
    async with m, admin(target) as client:
        async with failpoint(client, {"times": 10}, failCommands=["find"],
                             blockConnection=True, blockTimeMS=1500,
                             appName="connman:main"), m.session("main") as db:
            t0 = time.monotonic()
            results = await asyncio.gather(*(db[coll].find_one({}) for _ in range(3)),
                                           return_exceptions=True)
            waited = time.monotonic() - t0
            errors = [r for r in results if isinstance(r, BaseException)]
        # Two run (the unit's slot and one more); the third waits at the gate and gets connman's
        # typed timeout, never the driver's WaitQueueTimeoutError.
        assert len(errors) == 1, results
        assert isinstance(errors[0], PoolTimeout)
        assert errors[0].pool == "main"
        assert waited < 10.0
        stats = m.stats("main")
        assert stats["requests_timeouts"] == 1
        assert stats["requests_active"] == 0


@mongo_only
async def test_a_change_stream_after_its_unit_holds_a_slot_and_others_get_pool_timeout(coll: str,
        make_manager: Make, target: Target) -> None:
    m = make_manager(size=1, overflow=0, timeout=0.4)
    async with m:
        await m.native("main").connman.create_collection(coll)
        async with m.session("main") as db:
            pass
        # Used after its unit ended (a streamed response), the handle takes a slot per operation.
        stream = await maybe_await(db[coll].watch(max_await_time_ms=3000))
        reading = asyncio.create_task(stream.try_next())
        await asyncio.sleep(0.3)
        assert m.stats("main")["requests_active"] == 1
        assert m.pool("main").saturated()
        t0 = time.monotonic()
        with pytest.raises(PoolTimeout, match="'main'"):
            async with m.session("main") as other:
                await other[coll].find_one({})
        assert time.monotonic() - t0 < 3.0
        await reading
        await stream.close()
        assert not m.pool("main").saturated()
        assert await no_request_active(m) == 0


@mongo_only
async def test_stats_and_saturation_count_driver_connections_in_use(coll: str,
        make_manager: Make, target: Target) -> None:
    m = make_manager(size=1, overflow=0, timeout=0.5)
    async with m, admin(target) as client:
        pool: Any = m.pool("main")
        assert not pool.saturated()
        async with failpoint(client, {"times": 1}, failCommands=["find"], blockConnection=True,
                             blockTimeMS=1500, appName="connman:main"):
            # Outside any session (the native client): only CMAP sees it.
            busy = asyncio.ensure_future(m.native("main").connman[coll].find_one({}))
            deadline = time.monotonic() + 5
            while not pool.saturated() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            stats = m.stats("main")
            assert stats["requests_active"] == 1
            assert stats["pool_available"] == 0
            assert pool.saturated()
            assert pool.off_books() == 1  # what the invariant fixture would flag
            t0 = time.monotonic()
            # The health probe does not wait in the driver's queue: busy is not down.
            assert await pool.probe(2.0) == {"status": "busy", "saturated": True}
            assert time.monotonic() - t0 < 1.0
            await busy
        assert not pool.saturated()
        assert pool.off_books() == 0
        assert (await pool.probe(2.0))["status"] == "up"
        assert await pool.ping() > 0


# ---------------------------------------------------------------------------- lifetimes


@mongo_only
async def test_recycle_holds_under_steady_load(coll: str, make_manager: Make) -> None:
    m = make_manager(size=2, overflow=0, recycle=0.5, recycle_jitter=0.0, idle=None)
    async with m:
        await m.native("main").connman[coll].insert_one({"k": 1})
        m.pop_stats("main")
        stop = time.monotonic() + 3.0

        async def worker() -> None:
            while time.monotonic() < stop:
                async with m.session("main") as db:
                    await db[coll].find_one({"k": 1})

        await asyncio.gather(worker(), worker())
        stats = m.stats("main")
        # Ideal: 2 connections x 6 lifetimes. Never seen idle, so only check-in can retire them.
        assert stats["connections_recycled"] >= 3, stats
        assert stats["requests_num"] > 20


# ---------------------------------------------------------------------------- cursors


@mongo_only
@pytest.mark.parametrize("how", ["task-cancel", "anyio-scope", "error"])
async def test_a_unit_that_ends_mid_iteration_closes_its_cursor(coll: str,
        make_manager: Make, target: Target, how: str) -> None:
    m = make_manager(size=2, overflow=0)
    async with m, admin(target) as client:
        await fill(client, coll, 500)
        baseline = await open_cursors(client)
        started = asyncio.Event()

        async def report() -> None:
            async with m.session("main") as db:
                async for _row in db[coll].find({}, batch_size=10):
                    started.set()
                    await asyncio.sleep(0.01)
                    if how == "error":
                        raise KeyError("boom")

        for _ in range(3):
            started.clear()
            if how == "task-cancel":
                task = asyncio.create_task(report())
                await started.wait()
                await asyncio.sleep(0.05)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            elif how == "anyio-scope":
                with anyio.move_on_after(0.1):
                    await report()
            else:
                with pytest.raises(KeyError):
                    await report()
        assert await cursors_back_to(client, baseline) == baseline
        assert await no_request_active(m) == 0


@mongo_only
async def test_cancelled_while_the_cursor_is_created_leaves_none_open(coll: str,
        make_manager: Make, target: Target) -> None:
    m = make_manager(size=2, overflow=0)
    async with m, admin(target) as client:
        await fill(client, coll, 500)
        baseline = await open_cursors(client)
        async with failpoint(client, {"times": 4}, failCommands=["find", "aggregate"],
                             blockConnection=True, blockTimeMS=300, appName="connman:main"):
            for opener in ("find", "aggregate"):
                async def run(opener: str = opener) -> None:
                    async with m.session("main") as db:
                        if opener == "find":
                            await db[coll].find({}, batch_size=5).next()
                        else:
                            cursor = await _aggregate(db.rows, [{"$match": {}}], batchSize=5)
                            await cursor.next()

                task = asyncio.create_task(run())
                await asyncio.sleep(0.1)  # the command is on the server, its reply not back
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
        assert await cursors_back_to(client, baseline) == baseline


async def _aggregate(coll: Any, pipeline: Any, **kw: Any) -> Any:
    return await maybe_await(coll.aggregate(pipeline, **kw))


@mongo_only
async def test_a_cursor_read_after_its_unit_is_gated_and_closed_when_the_task_ends(coll: str,
        make_manager: Make, target: Target) -> None:
    m = make_manager(size=1, overflow=0, timeout=0.3)
    async with m, admin(target) as client:
        await fill(client, coll, 300)
        baseline = await open_cursors(client)
        got: list[int] = []

        async def export() -> None:
            async with m.session("main") as db:
                cursor = db[coll].find({}, batch_size=20)  # a StreamingResponse reads it later
            async for row in cursor:
                got.append(row["n"])
                if len(got) == 50:
                    return  # the client went away: nobody closes the cursor

        await asyncio.create_task(export())
        assert len(got) == 50
        assert await cursors_back_to(client, baseline) == baseline
        assert await no_request_active(m) == 0

        # Read to the end after its unit, the cursor works and needs no cleanup.
        async with m.session("main") as db:
            cursor = db[coll].find({}, batch_size=100)
        assert len([r async for r in cursor]) == 300


@mongo_only
async def test_a_change_stream_cancelled_in_its_await_is_closed(coll: str,
        make_manager: Make, target: Target) -> None:
    m = make_manager(size=2, overflow=0)
    async with m, admin(target) as client:
        await client.connman.create_collection(coll)
        baseline = await open_cursors(client)

        async def sse() -> None:
            async with m.session("main") as db:
                stream = await maybe_await(db[coll].watch(max_await_time_ms=2000))
            async with stream:
                async for _change in stream:
                    pass

        tasks = [asyncio.create_task(sse()) for _ in range(2)]
        deadline = time.monotonic() + 5
        while await open_cursors(client) < baseline + 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await open_cursors(client) >= baseline + 2
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert await cursors_back_to(client, baseline) == baseline
        assert await no_request_active(m) == 0


# ---------------------------------------------------------------------------- transactions


@mongo_only
async def test_transaction_commits_on_success_and_aborts_on_error_or_cancel(coll: str,
        make_manager: Make, target: Target) -> None:
    m = make_manager(transaction=True)
    async with m, admin(target) as client:
        await client.connman.create_collection(coll)
        async with m.session("main") as db:
            assert db.client_session is not None
            assert db.client_session.in_transaction
            await db[coll].insert_one({"_id": "a"})
            await db[coll].insert_one({"_id": "b"})
            assert await client.connman[coll].count_documents({}) == 0  # not yet visible
        assert await client.connman[coll].count_documents({}) == 2

        with pytest.raises(KeyError):
            async with m.session("main") as db:
                await db[coll].insert_one({"_id": "c"})
                raise KeyError("half-way")
        started = asyncio.Event()

        async def slow() -> None:
            async with m.session("main") as db:
                await db[coll].insert_one({"_id": "d"})
                started.set()
                await asyncio.sleep(10)

        task = asyncio.create_task(slow())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert {d["_id"] async for d in client.connman[coll].find({})} == {"a", "b"}
        assert await no_request_active(m) == 0


@mongo_only
async def test_transaction_transient_commit_failure_is_a_retryable_conflict(coll: str,
        make_manager: Make, target: Target) -> None:
    m = make_manager(transaction=True)
    async with m, admin(target) as client:
        await client.connman.create_collection(coll)
        async with failpoint(client, {"times": 1}, failCommands=["commitTransaction"],
                             errorCode=112, errorLabels=["TransientTransactionError"],
                             appName="connman:main"):
            with pytest.raises(TransactionConflict, match="'main'") as info:
                async with m.session("main") as db:
                    await db[coll].insert_one({"_id": "x"})
        assert info.value.pool == "main"
        assert info.value.retry_after >= 1
        assert await client.connman[coll].count_documents({}) == 0
        # A commit whose outcome is unknown is retried (the driver retries once; connman again).
        async with failpoint(client, {"times": 3}, failCommands=["commitTransaction"],
                             errorCode=91, appName="connman:main"), m.session("main") as db:
            await db[coll].insert_one({"_id": "y"})
        assert await client.connman[coll].count_documents({}) == 1


@mongo_only
async def test_transaction_unit_ended_or_used_concurrently_raises_typed_errors(coll: str,
        make_manager: Make) -> None:
    m = make_manager(transaction=True)
    async with m:
        await m.native("main").connman.create_collection(coll)
        async with m.session("main") as db:
            with pytest.raises(ConcurrentUse, match="'main'"):
                await asyncio.gather(db[coll].insert_one({"_id": 1}),
                                     db[coll].insert_one({"_id": 2}))
        with pytest.raises(SessionEnded, match="'main'"):
            await db[coll].find_one({})
        assert await no_request_active(m) == 0


@mongo_only
async def test_transaction_conflict_is_a_503_with_retry_after(coll: str,
        make_manager: Make, target: Target) -> None:
    import httpx
    from fastapi import Depends, FastAPI

    m = make_manager(transaction=True)
    app = FastAPI(lifespan=m.lifespan)

    @app.post("/orders")
    async def create(db: Any = Depends(m.session("main"))) -> dict[str, bool]:
        await db[coll].insert_one({"k": 1})
        return {"ok": True}

    async with admin(target) as client:
        await client.connman.create_collection(coll)
        transport = httpx.ASGITransport(app=app)
        async with m, httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            async with failpoint(client, {"times": 1}, failCommands=["insert"], errorCode=112,
                                 errorLabels=["TransientTransactionError"],
                                 appName="connman:main"):
                r = await http.post("/orders")
            assert r.status_code == 503
            assert r.headers["retry-after"]
            assert (await http.post("/orders")).status_code == 200
        assert await client.connman[coll].count_documents({}) == 1


@mongo_only
async def test_manual_commit_aborts_what_the_app_left_uncommitted(
        coll: str, make_manager: Make, target: Target) -> None:
    m = make_manager(transaction=True, commit="manual")
    async with m, admin(target) as client:
        await client.connman.create_collection(coll)
        async with m.session("main") as db:
            await db[coll].insert_one({"_id": "kept"})
            await db.client_session.commit_transaction()
        async with m.session("main") as db:
            await db[coll].insert_one({"_id": "dropped"})
        assert {d["_id"] async for d in client.connman[coll].find({})} == {"kept"}


@mongo_only
async def test_the_drivers_wait_queue_timeout_is_a_pool_timeout(
        coll: str, make_manager: Make, target: Target) -> None:
    m = make_manager(size=1, overflow=0, timeout=0.3)
    async with m, admin(target) as client, failpoint(
            client, {"times": 1}, failCommands=["find"], blockConnection=True, blockTimeMS=8000,
            appName="connman:main"):
        # Work outside any session holds the driver's only connection.
        hog = asyncio.ensure_future(m.native("main").connman[coll].find_one({}))
        deadline = time.monotonic() + 5
        while not m.pool("main").saturated() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        with pytest.raises(PoolTimeout, match="'main'"):
            async with m.session("main") as db:
                await db[coll].find_one({"x": 1})
        # A write PyMongo retries: its WaitQueueTimeoutError may come from the retry, after a
        # first attempt that was applied, and PyMongo does not say which: unknown outcome.
        with pytest.raises(StatementTimeout, match="outcome is unknown") as info:
            async with m.session("main") as db:
                await db[coll].insert_one({"x": 1})
        assert info.value.pool == "main"
        await hog
