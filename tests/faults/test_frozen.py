"""A server that stops answering without closing anything (SIGSTOP): every request ends in bounded
time with a typed error, shutdown is bounded, and the app recovers after SIGCONT.

The same check as /work/shared/field/17-mongo-server-down.py, on every backend with a server
(PostgreSQL, PostgreSQL behind PgBouncer, MariaDB with both drivers, the Mongo-wire server with both
drivers); SQLite, which has no server to freeze, gets a runaway query instead.

Bounds are generous on purpose (a loaded CI machine): the failure they catch is a request that
waits for ever (before `statement_timeout` and the bounded pre-ping, 30 s and more), not one that
took a second too long.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text

from connman import CheckoutTimeout, ConnectionManager, PoolTimeout, StatementTimeout
from connman.testing.servers import Server

from .._targets import Ops, Target
from ..conftest import only
from ..test_fast_path import scalar
from .frozen import frozen
from .scenarios import Rig

T = 1.5
"""`timeout`, `connect_timeout` and `statement_timeout` of the pools here, seconds."""
SLACK = 5.0
"""Added to every bound: scheduling delays of a loaded machine, never a missing deadline."""
LIMITS = {"size": 2, "overflow": 1, "timeout": T, "connect_timeout": T, "statement_timeout": T}


async def timed(aw: Any) -> tuple[Any, float]:
    """(result or exception, seconds); a call still waiting after 60 s counts as hung."""
    t0 = time.monotonic()
    try:
        result = await asyncio.wait_for(aw, 60)
    except Exception as exc:
        result = exc
    return result, time.monotonic() - t0


def checked_out(manager: ConnectionManager) -> tuple[int, int]:
    """(sessions the gate counts as active, connections checked out of SQLAlchemy's pool that
    the fast path does not hold idle); both 0 when every connection came back exactly once."""
    active = manager.stats("main")["requests_active"]
    pool: Any = manager.pool("main")
    if pool.backend != "sqlalchemy":
        return active, 0
    native = manager.native("main").sync_engine.pool
    return active, int(native.checkedout()) - len(getattr(pool, "_hot", ()))


def build(manager: ConnectionManager, ops: Ops, release: asyncio.Event,
          ready: asyncio.Event) -> FastAPI:
    app = FastAPI()
    app.include_router(manager.health_router())
    session = manager.session("main")

    @app.get("/read")
    async def read(unit: Any = Depends(session)) -> dict[str, bool]:
        await ops.select1(unit)
        return {"ok": True}

    @app.get("/hold")
    async def hold(unit: Any = Depends(session)) -> dict[str, bool]:
        # Check a connection out, wait for the freeze, then send a query it never answers.
        await ops.select1(unit)
        ready.set()
        await release.wait()
        await ops.select1(unit)
        return {"ok": True}

    return app


@pytest.fixture
async def rig_for(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    made: list[Rig] = []

    async def make(target: Target, pgbouncer: Server | None = None) -> Rig:
        rig = Rig(target, pgbouncer=pgbouncer)
        await rig.prepare()
        made.append(rig)
        return rig

    yield make
    for rig in made:
        await rig.cleanup()


async def frozen_run(rig: Rig, server: Server) -> dict[str, Any]:
    """Freeze `server` under a held session and new requests; thaw; report what each got."""
    manager = ConnectionManager({"main": rig.config(**LIMITS)})
    release, ready = asyncio.Event(), asyncio.Event()
    app = build(manager, rig.ops, release, ready)
    out: dict[str, Any] = {}
    async with manager.lifespan(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=90) as http:
            # Two idle connections in the pool (both will need a pre-ping), one held.
            warm = await asyncio.gather(http.get("/read"), http.get("/read"))
            assert [r.status_code for r in warm] == [200, 200]
            held = asyncio.ensure_future(timed(http.get("/hold")))
            await asyncio.wait_for(ready.wait(), 30)  # its first query answered: checked out
            with frozen(server):
                release.set()
                reads = await asyncio.gather(*(timed(http.get("/read")) for _ in range(4)))
                health = await timed(http.get("/health"))
                out["held"] = await held
            out["reads"] = reads
            out["health"] = health
            out["after"] = await timed(http.get("/read"))
            out["checked_out"] = checked_out(manager)
            out["stats"] = manager.stats("main")
    out["checked_out_after_close"] = manager.stats("main")["requests_active"]
    return out


def status(result: Any) -> Any:
    return result.status_code if isinstance(result, httpx.Response) else type(result).__name__


def assert_bounded(out: dict[str, Any]) -> None:
    # Gate wait + (connect or pre-ping) + one statement: each at most T.
    bound = 3 * T + SLACK
    held, held_s = out["held"]
    # The held session's query got no answer: 503, no Retry-After (StatementTimeout; on Mongo,
    # PyMongo's NetworkTimeout under `timeoutMS`, typed by connman).
    assert status(held) == 503, getattr(held, "text", held)
    assert "statement_timeout" in held.text
    assert not held.headers.get("Retry-After")
    assert held_s < bound, out
    for r, seconds in out["reads"]:
        # 503 + Retry-After: the pre-ping or the connect got no answer (CheckoutTimeout; Mongo:
        # no server selected within connect_timeout), or the gate timed out behind them
        # (PoolTimeout). A read sent on a pooled connection that was not pinged (Mongo has no
        # pre-ping; SQL trusts a connection checked in within the last 0.5 s, as HikariCP)
        # gets no answer: a StatementTimeout (503, no Retry-After).
        assert status(r) == 503, (status(r), getattr(r, "text", r))
        if "statement_timeout" not in r.text:
            assert r.headers.get("Retry-After"), (r.headers, r.text)
        assert seconds < bound, out
    health, health_s = out["health"]
    assert status(health) == 503, out
    assert health_s < 2.0 + SLACK, out
    after, _ = out["after"]
    assert status(after) == 200, getattr(after, "text", after)
    assert out["checked_out"] == (0, 0), out
    assert out["checked_out_after_close"] == 0


@only(exclude=("sqlite",))
async def test_frozen_server_every_request_ends_in_bounded_time(target: Target, rig_for: Any
                                                                 ) -> None:
    rig = await rig_for(target)
    assert target.server is not None
    out = await frozen_run(rig, target.server)
    assert_bounded(out)
    if target.kind == "sql":
        assert out["stats"]["connections_lost"] >= 1  # the unanswered ones were discarded


@pytest.mark.pgbouncer
@only(kinds=("sql",), exclude=("sqlite", "mysql-aiomysql", "mysql-asyncmy"))
async def test_frozen_pgbouncer_every_request_ends_in_bounded_time(
        target: Target, rig_for: Any, pgbouncer_server: Server) -> None:
    rig = await rig_for(target, pgbouncer_server)
    out = await frozen_run(rig, pgbouncer_server)
    assert_bounded(out)


@only(kinds=("sql",), exclude=("sqlite",))
async def test_unanswered_pre_ping_discards_the_connection_with_a_typed_error(
        target: Target, rig_for: Any) -> None:
    rig = await rig_for(target)
    assert target.server is not None
    manager = ConnectionManager({"main": rig.config(**{**LIMITS, "size": 1, "overflow": 0})})
    async with manager:
        async with manager.session("main") as unit:
            await rig.ops.select1(unit)
        lost = manager.stats("main")["connections_lost"]
        await asyncio.sleep(0.6)  # past the 0.5 s in which a just-used connection is trusted
        with frozen(target.server):
            err, seconds = await timed(_select1(manager, rig.ops))
            assert isinstance(err, CheckoutTimeout), err
            assert isinstance(err, PoolTimeout)  # so FastAPI answers 503 + Retry-After
            assert err.pool == "main"
            assert "'main'" in str(err)
            assert "pre-ping" in str(err)
            assert seconds < T + SLACK
            # That connection is gone; the next checkout connects, and that gets no answer either.
            err, seconds = await timed(_select1(manager, rig.ops))
            assert isinstance(err, CheckoutTimeout), err
            assert "connect_timeout" in str(err)
            assert seconds < T + SLACK
        assert manager.stats("main")["connections_lost"] >= lost + 1
        await _select1(manager, rig.ops)  # recovered without a restart
        assert checked_out(manager) == (0, 0)


async def _select1(manager: ConnectionManager, ops: Ops) -> None:
    async with manager.session("main") as unit:
        await ops.select1(unit)


@only(kinds=("sql",), exclude=("sqlite",))
async def test_statement_timeout_discards_the_connection_and_rolls_back(
        target: Target, rig_for: Any) -> None:
    rig = await rig_for(target)
    assert target.server is not None
    manager = ConnectionManager({"main": rig.config(**LIMITS)})
    async with manager:
        await rig.create_table(manager)
        err: BaseException | None = None
        try:
            async with manager.session("main") as unit:
                await rig.ops.insert(unit, "lost")
                with frozen(target.server):
                    t0 = time.monotonic()
                    try:
                        await rig.ops.select1(unit)
                    finally:
                        seconds = time.monotonic() - t0
        except StatementTimeout as exc:
            err = exc
        assert isinstance(err, StatementTimeout), err
        assert err.pool == "main"
        assert "statement_timeout=1.5s" in str(err)
        assert seconds < T + SLACK
        assert checked_out(manager) == (0, 0)
        assert manager.stats("main")["connections_lost"] >= 1
        async with manager.session("main") as unit:
            assert await rig.ops.keys(unit) == set()  # the unit of work was rolled back


@only(kinds=("mongo",))
@pytest.mark.parametrize("path", ["session", "fast_path"])
async def test_a_mongo_operation_without_an_answer_is_a_statement_timeout(
        target: Target, rig_for: Any, path: str) -> None:
    from pymongo.errors import PyMongoError

    rig = await rig_for(target)
    assert target.server is not None
    manager = ConnectionManager({"main": rig.config(**LIMITS)})
    unit_of = manager.session if path == "session" else manager.connection
    async with manager:
        async with unit_of("main") as unit:
            await rig.ops.select1(unit)
        with frozen(target.server):
            t0 = time.monotonic()
            with pytest.raises(StatementTimeout) as info:
                async with unit_of("main") as unit:
                    await rig.ops.select1(unit)
            seconds = time.monotonic() - t0
        err = info.value
        assert err.pool == "main"
        assert "'main'" in str(err)
        assert isinstance(err.__cause__, PyMongoError)  # PyMongo's own error, kept as the cause
        assert seconds < T + SLACK
        assert checked_out(manager) == (0, 0)
        async with unit_of("main") as unit:  # the server answers again: so does the pool
            await rig.ops.select1(unit)


@only(kinds=("sql",), exclude=("sqlite",))
async def test_fast_path_calls_are_bounded_and_the_connection_discarded(
        target: Target, rig_for: Any) -> None:
    # asyncpg: its own `command_timeout` (TimeoutError) typed by connman; the MySQL drivers'
    # cursors: connman's deadline kills the connection. Either way StatementTimeout naming the
    # pool, and the connection is not kept for reuse.
    rig = await rig_for(target)
    assert target.server is not None
    manager = ConnectionManager({"main": rig.config(**LIMITS)})
    async with manager:
        async with manager.connection("main") as conn:
            assert await scalar(target, conn, "SELECT 1") == 1
        lost = manager.stats("main")["connections_lost"]
        with frozen(target.server):
            t0 = time.monotonic()
            with pytest.raises(StatementTimeout) as info:
                async with manager.connection("main") as conn:
                    await scalar(target, conn, "SELECT 1")
            assert time.monotonic() - t0 < T + SLACK
        assert info.value.pool == "main"
        assert "statement_timeout=1.5s" in str(info.value)
        assert manager.stats("main")["connections_lost"] == lost + 1  # not kept for reuse
        assert checked_out(manager) == (0, 0)
        async with manager.connection("main") as conn:
            assert await scalar(target, conn, "SELECT 1") == 1


@only(kinds=("sql",), exclude=("sqlite",))
async def test_shutdown_with_a_frozen_server_is_bounded(target: Target, rig_for: Any) -> None:
    rig = await rig_for(target)
    assert target.server is not None
    # No statement_timeout: the held session's query waits as long as the server is frozen.
    # Six connections, five of them idle at dispose: one goodbye's wait, not five.
    cfg = rig.config(size=6, overflow=1, timeout=T, connect_timeout=T, drain_timeout=1.0)
    manager = ConnectionManager({"main": cfg})
    await manager.open()
    stuck: asyncio.Future[Any] | None = None
    try:
        started = asyncio.Event()

        async def held() -> None:
            async with manager.session("main") as unit:
                await rig.ops.select1(unit)
                started.set()
                await asyncio.sleep(0.5)
                await rig.ops.select1(unit)  # sent to the frozen server

        stuck = asyncio.ensure_future(held())
        await started.wait()
        with frozen(target.server):
            _, seconds = await timed(manager.close())
            # drain_timeout, then one unanswered goodbye (connect_timeout); the others are
            # dropped at once (asyncpg's close waits for the server to hang up: 5 x 1.5 s).
            assert seconds < 1.0 + T + SLACK, seconds
            assert manager.pool("main").closed
    finally:
        await manager.close()
        if stuck is not None:
            await asyncio.gather(stuck, return_exceptions=True)
    assert manager.stats("main")["requests_active"] == 0


@only(kinds=("sql",), exclude=("postgres", "postgres-psycopg", "mysql-aiomysql", "mysql-asyncmy"))
async def test_sqlite_statement_timeout_interrupts_the_query(target: Target) -> None:
    manager = ConnectionManager({"main": target.config(statement_timeout=0.5, size=1,
                                                       overflow=0)})
    runaway = text("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
                   "SELECT count(*) FROM c")
    async with manager:
        t0 = time.monotonic()
        with pytest.raises(StatementTimeout, match="'main'"):
            async with manager.session("main") as unit:
                await unit.execute(runaway)
        assert time.monotonic() - t0 < 0.5 + SLACK
        assert checked_out(manager) == (0, 0)
        assert manager.stats("main")["connections_lost"] == 1  # discarded, not reused
        async with manager.session("main") as unit:
            assert (await unit.execute(text("SELECT 1"))).scalar() == 1


@only(kinds=("sql",), exclude=("postgres", "postgres-psycopg", "mysql-aiomysql", "mysql-asyncmy"))
@pytest.mark.parametrize("shape", ["await", "async_with", "fetchall"])
async def test_sqlite_fast_path_statement_timeout_interrupts_the_query(
        target: Target, shape: str) -> None:
    manager = ConnectionManager({"main": target.config(statement_timeout=0.5, size=1,
                                                       overflow=0)})
    runaway = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
               "SELECT count(*) FROM c")
    async with manager:
        t0 = time.monotonic()
        with pytest.raises(StatementTimeout, match="'main'"):
            async with manager.connection("main") as conn:
                if shape == "await":
                    await conn.execute_fetchall(runaway)
                elif shape == "async_with":
                    async with conn.execute(runaway) as cursor:
                        await cursor.fetchall()
                else:
                    cursor = await conn.execute(runaway)
                    await cursor.fetchall()
        assert time.monotonic() - t0 < 0.5 + SLACK
        assert checked_out(manager) == (0, 0)
        assert manager.stats("main")["connections_lost"] == 1  # discarded, not reused
        async with manager.connection("main") as conn:
            async with conn.execute("SELECT 1") as cursor:
                assert await cursor.fetchone() == (1,)
            assert await conn.execute_fetchall("SELECT 2") == [(2,)]
