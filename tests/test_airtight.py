"""The unit of work is airtight: nothing it holds escapes the gate, on every backend.

Each test replays a pattern real FastAPI code uses (a streaming body, a background task, `gather`
over one session or one fast-path connection, a pool used from another event loop, a health probe
on a busy pool) against the real servers, and checks what the server and SQLAlchemy see, not only
what connman says. The suite's autouse `_gate_invariant` fixture checks the invariant after every
test as well.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import BackgroundTasks, Depends, FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from sqlalchemy import text

from connman import ConcurrentUse, ConnectionManager, PoolTimeout, SessionEnded, WrongEventLoop
from connman.testing.invariant import gate_violations
from connman.testing.proxy import TcpProxy

from ._targets import Ops, Target, app_name_args, serve
from .conftest import only
from .test_fast_path import scalar, sleep_sql

Make = Callable[..., ConnectionManager]
sql_only = only(kinds=("sql",))


def sql_engine_out(m: ConnectionManager) -> int:
    """Connections SQLAlchemy's own pool has checked out now (the driver's count, not connman's)."""
    pool: Any = m.native("main").sync_engine.pool
    return int(pool.checkedout())


# ---------------------------------------------------------------- a unit of work stays ended
@sql_only
async def test_a_session_used_after_its_unit_ended_raises_and_checks_nothing_out(
        make_manager: Make, target: Target, ops: Ops) -> None:
    m = make_manager(size=1, overflow=0)
    async with m:
        async with m.session("main") as s:
            await ops.create(s)
        for use in (lambda: s.execute(text("SELECT 1")), lambda: s.connection(),
                    lambda: ops.insert(s, "late")):
            with pytest.raises(SessionEnded, match=r"pool 'main'.*closed") as info:
                await use()
            assert info.value.pool == "main"
            assert sql_engine_out(m) == 0
        # The pool of one still serves: nothing is held by the ended session.
        async with asyncio.timeout(5), m.session("main") as s2:
            assert await ops.keys(s2) == set()


@sql_only
async def test_a_fast_path_connection_used_after_its_block_raises(
        make_manager: Make, target: Target) -> None:
    m = make_manager(size=1, overflow=0)
    async with m:
        async with m.connection("main") as conn:
            assert await scalar(target, conn, "SELECT 1") == 1
        with pytest.raises(SessionEnded, match="pool 'main'"):
            await scalar(target, conn, "SELECT 1")
        assert "returned" in repr(conn)
        async with m.connection("main") as again:
            assert await scalar(target, again, "SELECT 1") == 1


# ---------------------------------------------------------------- work after the response
@sql_only
async def test_streaming_body_over_http_request_scope_streams_and_returns_the_connection(
        make_manager: Make, target: Target, ops: Ops) -> None:
    m = make_manager(size=1, overflow=0, timeout=3)
    async with m, m.session("main") as s:
        await ops.create(s)
        for i in range(20):
            await ops.insert(s, f"k{i:02d}")
    app = FastAPI(lifespan=m.lifespan)
    table = ops.table

    @app.get("/export")
    async def export(db: Any = Depends(m.session("main", scope="request"))) -> StreamingResponse:
        async def rows() -> AsyncIterator[str]:
            result = await db.stream(text(f"SELECT k FROM {table} ORDER BY k"))
            async for (k,) in result:
                yield f"{k}\n"
        return StreamingResponse(rows(), media_type="text/plain")

    @app.get("/one")
    async def one(db: Any = Depends(m.session("main"))) -> dict[str, int]:
        return {"v": (await db.execute(text("SELECT 1"))).scalar_one()}

    async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        for _ in range(3):  # a pool of one: each export must give its connection back
            r = await client.get("/export")
            assert r.status_code == 200
            assert r.text.split() == [f"k{i:02d}" for i in range(20)]
        assert (await client.get("/one")).json() == {"v": 1}
        stats = m.stats("main")
        assert stats["requests_active"] == 0
        assert sql_engine_out(m) == 0


@sql_only
async def test_streaming_body_over_http_function_scope_gets_a_clear_error_not_a_leak(
        make_manager: Make, target: Target) -> None:
    m = make_manager(size=1, overflow=0, timeout=3)
    app = FastAPI(lifespan=m.lifespan)
    errors: list[BaseException] = []

    @app.get("/export")
    async def export(db: Any = Depends(m.session("main"))) -> StreamingResponse:
        async def rows() -> AsyncIterator[str]:
            try:
                await db.execute(text("SELECT 1"))
                yield "rows\n"
            except SessionEnded as exc:
                errors.append(exc)
                yield "refused\n"
        return StreamingResponse(rows(), media_type="text/plain")

    async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        for _ in range(3):
            assert (await client.get("/export")).text == "refused\n"
        assert len(errors) == 3
        assert all(e.pool == "main" and "scope=\"request\"" in str(e) for e in errors)
        assert sql_engine_out(m) == 0
        if target.server is not None:  # no backend left idle in transaction by the refusals
            async with m.session("main") as s:
                await s.execute(text("SELECT 1"))


@sql_only
async def test_background_task_writes_through_its_own_session(
        make_manager: Make, target: Target, ops: Ops) -> None:
    m = make_manager(size=1, overflow=0, timeout=3)
    async with m, m.session("main") as s:
        await ops.create(s)
    app = FastAPI(lifespan=m.lifespan)
    done = asyncio.Event()

    async def audit(key: str) -> None:
        async with m.session("main") as db:  # the documented way: a unit of work of its own
            await ops.insert(db, key)
        done.set()

    @app.post("/items/{key}")
    async def create(key: str, tasks: BackgroundTasks,
                     db: Any = Depends(m.session("main"))) -> dict[str, str]:
        await db.execute(text("SELECT 1"))
        tasks.add_task(audit, f"audit-{key}")
        return {"key": key}

    async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        for key in ("a", "b"):
            done.clear()
            assert (await client.post(f"/items/{key}")).status_code == 200
            await asyncio.wait_for(done.wait(), 10)
        async with m.session("main") as s:
            assert await ops.keys(s) == {"audit-a", "audit-b"}
        assert sql_engine_out(m) == 0


# ---------------------------------------------------------------- two tasks, one unit
@sql_only
async def test_gather_over_one_session_is_concurrent_use_and_leaves_nothing_out(
        make_manager: Make, target: Target, ops: Ops) -> None:
    m = make_manager(size=2, overflow=0, timeout=3)
    async with m:
        async with m.session("main") as s:
            await ops.create(s)
        for _ in range(3):
            with pytest.raises(ConcurrentUse, match="pool 'main'") as info:
                async with m.session("main") as s:
                    # Both tasks ask the new session for its first connection at once.
                    await asyncio.gather(ops.insert(s, "x"), ops.slow(s, 0.2))
            assert info.value.pool == "main"
        await asyncio.sleep(0.5)  # the orphaned query is over by now
        assert sql_engine_out(m) == 0
        assert m.stats("main")["requests_active"] == 0
        async with asyncio.timeout(8):  # both connections serve again, at once
            async def use() -> None:
                async with m.session("main") as s:
                    await ops.slow(s, 0.1)
            await asyncio.gather(use(), use())
        async with m.session("main") as s:
            assert await ops.keys(s) == set()  # the failed units committed nothing


@sql_only
async def test_gather_over_one_fast_path_connection_is_refused_and_the_busy_one_discarded(
        make_manager: Make, target: Target) -> None:
    m = make_manager(size=1, overflow=0, timeout=3)
    async with m:
        async with m.connection("main") as conn:
            driver_conn = conn._cm_conn
        # aiosqlite would queue both on its thread; the others would fail in the driver (asyncmy
        # hung). The proxy sees both queries and refuses the second before the driver does.
        slow = (sleep_sql(target, 2.0) if target.driver != "aiosqlite" else
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                "WHERE x < 3000000) SELECT count(*) FROM c")
        first: asyncio.Future[Any] | None = None
        with pytest.raises(ConcurrentUse, match="pool 'main'") as info:
            async with m.connection("main") as conn:
                first = asyncio.ensure_future(scalar(target, conn, slow))
                await asyncio.sleep(0.02)  # the first query is running
                await scalar(target, conn, "SELECT 2")
        assert info.value.pool == "main"
        # The busy connection was discarded under the first query: it ends (with the driver's
        # error, or its answer if it was already on its way), it never hangs.
        assert first is not None
        await asyncio.wait([first], timeout=10)
        assert first.done()
        first.exception() if not first.cancelled() else None
        # The busy connection was discarded: the next ten checkouts never get it.
        for _ in range(10):
            async with m.connection("main") as conn:
                assert conn._cm_conn is not driver_conn
                assert await scalar(target, conn, "SELECT 1") == 1
        assert m.stats("main")["connections_closed"] >= 1
        assert sql_engine_out(m) == 0


async def test_a_checkout_straight_from_the_engine_is_admitted_through_the_gate(
        tmp_path: Any, managers: list[ConnectionManager]) -> None:
    # `manager.native(name).connect()` (a migration, an app's own engine use) checks out of the
    # same ledger: nobody holds a slot for it, so it takes a lease of its own from the gate,
    # waits in the same queue and gives the slot back with the connection.
    m = ConnectionManager({"main": {"url": f"sqlite+aiosqlite:///{tmp_path}/inv.db", "size": 1,
                                    "overflow": 0, "timeout": 0.3}})
    managers.append(m)
    async with m:
        conn = await m.native("main").connect()
        try:
            assert m.stats("main")["requests_active"] == 1
            with pytest.raises(PoolTimeout, match="pool 'main'"):  # its slot is taken
                async with m.session("main") as s:
                    await s.execute(text("SELECT 1"))
        finally:
            await conn.close()
        assert m.stats("main")["requests_active"] == 0
        async with m.session("main") as s:  # the slot went back with the connection
            await s.execute(text("SELECT 1"))
            assert m.stats("main")["requests_active"] == 1
            with pytest.raises(PoolTimeout, match="pool 'main'"):  # and the other way round
                await m.native("main").connect()
        assert m.stats("main")["requests_active"] == 0
        assert sql_engine_out(m) == 0
        assert not gate_violations(reset=False)


# ---------------------------------------------------------------- event loops
def _use_once(m: ConnectionManager, target: Target) -> None:
    async def use() -> None:
        async with m.session("main") as unit:
            await Ops(target).select1(unit)
    asyncio.run(use())


async def pg_backends(target: Target, app: str) -> int:
    """PostgreSQL's count of the connections whose application_name is `app`."""
    import asyncpg

    assert target.server is not None
    conn = await asyncpg.connect(target.server.url())
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app))
    finally:
        await conn.close()


def tagged(target: Target, **fields: Any) -> dict[str, Any]:
    """The target's pool config; on PostgreSQL its connections carry this test's application_name."""
    if target.is_postgres:
        fields["options"] = {"connect_args": app_name_args(target.driver, target.tag)}
    return target.config(**fields)


@only()
def test_a_pool_from_a_dead_loop_fails_fast_and_closes_quietly(target: Target) -> None:
    m = ConnectionManager({"main": tagged(target, size=2, overflow=0)})
    asyncio.run(m.open())  # a session-scoped fixture's loop, gone after this line
    for _ in range(2):
        with pytest.raises(WrongEventLoop, match="pool 'main'") as info:
            _use_once(m, target)
        assert info.value.pool == "main"
    asyncio.run(asyncio.wait_for(m.close(), 10))  # another loop: drops the driver objects
    gc.collect()  # nothing left for the collector to warn about (filterwarnings = error)
    if target.is_postgres:  # the server saw them go
        assert asyncio.run(pg_backends(target, target.tag)) == 0
    # And the manager opens again in a new loop, as a fresh lifespan would.
    async def reopen() -> None:
        async with m, m.session("main") as unit:
            await Ops(target).select1(unit)
    asyncio.run(reopen())


@only()
def test_a_fresh_lifespan_per_test_client_keeps_working(target: Target) -> None:
    m = ConnectionManager({"main": target.config(size=1, overflow=0)})
    app = FastAPI(lifespan=m.lifespan)
    ops = Ops(target)

    @app.get("/q")
    async def q(db: Any = Depends(m.session("main"))) -> dict[str, bool]:
        await ops.select1(db)
        return {"ok": True}

    for _ in range(3):  # each TestClient runs the lifespan in its own event loop
        with TestClient(app) as client:
            assert client.get("/q").json() == {"ok": True}
    assert m.pool("main").closed


def test_a_pool_opened_in_another_loop_that_still_exists_refuses_here(tmp_path: Any) -> None:
    m = ConnectionManager({"main": {"url": f"sqlite+aiosqlite:///{tmp_path}/t.db", "size": 1}})
    other = asyncio.new_event_loop()
    try:
        other.run_until_complete(m.open())

        async def use() -> None:
            async with m.session("main"):
                pass

        with pytest.raises(WrongEventLoop, match="pool 'main'"):
            asyncio.run(use())
        with pytest.raises(WrongEventLoop):
            asyncio.run(m.open())  # not reopened under the loop that owns it
        other.run_until_complete(m.close())
    finally:
        other.close()


# ---------------------------------------------------------------- health under load
@only()
async def test_health_on_a_saturated_pool_is_up_at_once_and_never_queues(
        make_manager: Make, target: Target, ops: Ops) -> None:
    m = make_manager(size=1, overflow=1, timeout=10)
    app = FastAPI(lifespan=m.lifespan)
    app.include_router(m.health_router(detail=True))
    release = asyncio.Event()
    holding = 0

    async def hold() -> None:
        nonlocal holding
        async with m.session("main") as unit:
            await ops.select1(unit)
            holding += 1
            await release.wait()

    async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        holders = [asyncio.create_task(hold()) for _ in range(3)]  # 2 hold, 1 waits
        try:
            while holding < 2 or m.stats("main")["requests_waiting"] < 1:
                await asyncio.sleep(0.01)
            r = await asyncio.wait_for(client.get("/health"), 5)
            entry = r.json()["pools"]["main"]
            assert r.status_code == 200
            assert entry["status"] == "busy"  # saturated, working: not down
            assert entry["saturated"] is True
            assert entry["stats"]["requests_waiting"] == 1
            assert entry["stats"]["pool_available"] == 0
        finally:
            release.set()
            await asyncio.gather(*holders)
        r = await client.get("/health")
        assert r.status_code == 200
        assert r.json()["pools"]["main"]["ping_ms"] > 0


@only(exclude=("sqlite",))
async def test_health_with_the_server_unreachable_is_503_with_a_reason(
        target: Target, managers: list[ConnectionManager]) -> None:
    assert target.server is not None
    with TcpProxy(target.server.host, target.server.port) as proxy:
        url = target.url().replace(f":{target.server.port}", f":{proxy.port}")
        m = ConnectionManager({"main": target.config(url=url, size=1, overflow=0,
                                                      connect_timeout=1)})
        managers.append(m)
        app = FastAPI(lifespan=m.lifespan)
        app.include_router(m.health_router(ping_timeout=1.5, detail=True))
        async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=15) as client:
            assert (await client.get("/health")).status_code == 200
            proxy.cut()
            r = await client.get("/health")
            entry = r.json()["pools"]["main"]
            assert r.status_code == 503
            assert entry["status"] == "down"
            assert entry["error"].strip()
            proxy.restore()
            for _ in range(50):  # recovers without restarting the app
                r = await client.get("/health")
                if r.status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert r.status_code == 200, r.text


# ---------------------------------------------------------------- ending never lies
@only(kinds=("sql",), exclude=("mysql-aiomysql", "mysql-asyncmy"))
async def test_a_commit_that_fails_is_a_5xx_and_leaves_nothing_out(
        make_manager: Make, target: Target) -> None:
    m = make_manager(size=1, overflow=0, timeout=3)
    table = Ops(target).table
    async with m, m.session("main") as s:
        # A constraint checked only at commit: the handler itself succeeds.
        if target.is_postgres:
            await s.execute(text(f"CREATE TABLE {table} (k INT UNIQUE DEFERRABLE "
                                 "INITIALLY DEFERRED)"))
        else:
            await s.execute(text(f"CREATE TABLE {table}_p (k INT PRIMARY KEY)"))
            await s.execute(text(f"CREATE TABLE {table} (k INT REFERENCES {table}_p(k) "
                                 "DEFERRABLE INITIALLY DEFERRED)"))

    app = FastAPI(lifespan=m.lifespan)

    @app.post("/bad")
    async def bad(db: Any = Depends(m.session("main"))) -> dict[str, bool]:
        if target.driver == "aiosqlite":
            await db.execute(text("PRAGMA foreign_keys = ON"))
            await db.execute(text(f"INSERT INTO {table} VALUES (1)"))
        else:
            await db.execute(text(f"INSERT INTO {table} VALUES (1), (1)"))
        return {"ok": True}

    @app.get("/ok")
    async def ok(db: Any = Depends(m.session("main"))) -> dict[str, int]:
        return {"n": (await db.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()}

    async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        for attempt in range(2):
            bad = await client.post("/bad")
            if attempt and target.driver == "aiosqlite" and bad.status_code == 503:
                # SQLAlchemy 2.0.30 leaves the connection it invalidated after the failed COMMIT
                # to the garbage collector, with its write lock: the next writer waits `timeout`
                # and gets the typed "locked" 503 (newer SQLAlchemy closes it at once).
                assert "locked" in bad.text, bad.text
                continue
            assert bad.status_code == 500, bad.text
        assert (await client.get("/ok")).json() == {"n": 0}
        assert sql_engine_out(m) == 0


# ---------------------------------------------------------------- server-side view
@only(kinds=("sql",), exclude=("sqlite", "mysql-aiomysql", "mysql-asyncmy"))
async def test_after_misuse_the_server_sees_no_connection_left_in_a_transaction(
        managers: list[ConnectionManager], target: Target, ops: Ops) -> None:
    m = ConnectionManager({"main": tagged(target, size=2, overflow=0, timeout=3)})
    managers.append(m)
    async with m:
        async with m.session("main") as s:
            await ops.create(s)
        with pytest.raises(ConcurrentUse):
            async with m.session("main") as s:
                await asyncio.gather(ops.insert(s, "x"), ops.slow(s, 0.2))
        with pytest.raises(SessionEnded):
            await ops.insert(s, "late")
        await asyncio.sleep(0.5)
        import asyncpg

        assert target.server is not None
        raw = await asyncpg.connect(target.server.url())
        try:
            states = await raw.fetch("SELECT state FROM pg_stat_activity "
                                     "WHERE application_name = $1", target.tag)
        finally:
            await raw.close()
        assert len(states) <= 2
        assert "idle in transaction" not in {r["state"] for r in states}
        async with m.session("main") as s:
            assert await ops.keys(s) == set()


# ---------------------------------------------------------------- a checkin cut short
class StalledReset:
    """A `reset` listener on SQLAlchemy's pool that, while armed, waits until it is cancelled:
    a connection whose reset a cancellation interrupts (a request cancelled while its connection
    was being rolled back on checkin, or a reset past its deadline on a silent server)."""

    def __init__(self, m: ConnectionManager) -> None:
        from sqlalchemy import event
        from sqlalchemy.util import await_only

        self.armed = False
        self.entered = asyncio.Event()
        self.pool: Any = m.native("main").sync_engine.pool

        def on_reset(dbapi_con: Any, rec: Any, state: Any) -> None:
            if self.armed and state.asyncio_safe and not state.terminate_only:
                self.armed = False
                self.entered.set()
                await_only(asyncio.sleep(3600))

        self.listener = on_reset
        event.listen(self.pool, "reset", on_reset)

    async def cancel_inside(self, body: Any) -> None:
        """Run `body`, arm the stall, and cancel `body` once a checkin is stuck in it."""
        self.entered.clear()
        self.armed = True
        task = asyncio.ensure_future(body)
        await asyncio.wait_for(self.entered.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@sql_only
@pytest.mark.parametrize("path", ["session", "commit_manual", "fast_path_discard"])
async def test_a_checkin_cut_short_by_a_cancel_gives_the_slot_back(
        make_manager: Make, target: Target, path: str) -> None:
    # SQLAlchemy < 2.0.58 (its #13699) invalidated such a connection but never checked the record
    # in: the slot was lost for the life of the process. A pool of one shows it at once.
    m = make_manager(size=1, overflow=0, timeout=3,
                     commit="manual" if path == "commit_manual" else "auto")
    async with m:
        stall = StalledReset(m)
        if path == "fast_path_discard":
            # A session that needs the connection the fast path holds idle discards it first
            # (SQLAlchemy's close and reset): cancelled there.
            async with m.connection("main") as conn:
                assert await scalar(target, conn, "SELECT 1") == 1

            async def body() -> None:
                async with m.session("main") as s:
                    await s.execute(text("SELECT 1"))
        else:
            async def body() -> None:
                async with m.session("main") as s:
                    await s.execute(text("SELECT 1"))
                    if path == "commit_manual":
                        await s.commit()

        await stall.cancel_inside(body())
        assert sql_engine_out(m) == 0
        assert gate_violations() == []
        for _ in range(3):  # the only slot is back, and serves
            async with asyncio.timeout(5), m.session("main") as s:
                assert (await s.execute(text("SELECT 1"))).scalar_one() == 1
            async with asyncio.timeout(5), m.connection("main") as conn:
                assert await scalar(target, conn, "SELECT 1") == 1
        assert sql_engine_out(m) == 0
