"""Pools heal by themselves: a server that is down at startup, then answers, is used with no
restart; a failing app lifespan closes the pools it opened. Real servers, behind a TCP proxy that
refuses connections until the test lets them through."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text

from connman import ConnectionManager, PoolClosed, PoolNotOpen, PoolStartupError, ServerUnavailable
from connman.testing.proxy import TcpProxy

from ._targets import Ops, Target, serve
from .conftest import only

DEADLINE = 60.0  # seconds a wait for a condition may take on a loaded machine before failing


def heal_tasks() -> list[str]:
    return sorted(t.get_name() for t in asyncio.all_tasks()
                  if t.get_name().startswith("connman-heal-"))


def via(target: Target, proxy: TcpProxy) -> str:
    assert target.server is not None
    return target.url().replace(f":{target.server.port}", f":{proxy.port}")


def build(m: ConnectionManager, ops: Ops, *, fast_path: bool) -> FastAPI:
    app = FastAPI(lifespan=m.lifespan)
    app.include_router(m.health_router())
    app.include_router(m.health_router(prefix="/internal/health", detail=True))

    @app.get("/main")
    async def main(unit: Any = Depends(m.session("main"))) -> dict[str, bool]:
        await unit.execute(text("SELECT 1"))  # "main" is SQLite
        return {"ok": True}

    @app.get("/late")
    async def late(unit: Any = Depends(m.session("late"))) -> dict[str, bool]:
        await ops.select1(unit)
        return {"ok": True}

    @app.get("/late/inline")
    async def late_inline() -> dict[str, str]:
        try:
            async with m.session("late") as unit:
                await ops.select1(unit)
        except ServerUnavailable as exc:
            return {"kind": exc.kind, "message": str(exc)}
        if fast_path:
            async with m.connection("late"):
                pass
        return {"kind": "served", "message": ""}

    return app


@only(exclude=("sqlite",))
async def test_an_optional_pool_down_at_startup_answers_503_then_heals_without_a_restart(
        target: Target, managers: list[ConnectionManager], tmp_path: Path) -> None:
    ops = Ops(target)
    with TcpProxy("127.0.0.1", target.server.port) as proxy:  # type: ignore[union-attr]
        proxy.cut()  # refuses connections: the server is "not up yet"
        m = ConnectionManager({
            "main": {"url": f"sqlite+aiosqlite:///{tmp_path}/main.db", "size": 1},
            "late": target.config(url=via(target, proxy), size=1, overflow=1, timeout=2,
                                  connect_timeout=1, required=False)})
        managers.append(m)
        app = build(m, ops, fast_path=target.is_sql)
        async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as http:
            assert heal_tasks() == ["connman-heal-late"]
            assert "down since" in repr(m)  # the late pool: not just "closed"
            assert (await http.get("/main")).status_code == 200
            r = await http.get("/late")
            assert r.status_code == 503
            assert r.headers["retry-after"] == "2"
            assert "unreachable since" in r.json()["detail"]
            assert "lifespan" not in r.text
            inline = (await http.get("/late/inline")).json()
            assert inline["kind"] == "down"
            assert "unreachable since" in inline["message"]
            assert "lifespan" not in inline["message"]
            if target.is_sql:
                with pytest.raises(ServerUnavailable) as info:
                    async with m.connection("late"):
                        pass
                assert info.value.kind == "down"
                assert info.value.since is not None
                cause = info.value.__cause__  # the driver's error of the last attempt
                assert cause is not None
                assert isinstance(info.value, type(cause))
            public = (await http.get("/health")).json()
            assert public["status"] == "up"  # an optional pool only reports
            assert public["pools"]["late"]["status"] == "down"
            assert public["pools"]["late"]["error"].startswith("unreachable since")
            assert set(public["pools"]["late"]) == {"status", "since", "error"}
            detail = (await http.get("/internal/health")).json()["pools"]["late"]
            assert detail["url"]
            assert detail["error"].startswith("unreachable since")
            assert m.stats("late")["requests_unavailable"] >= 2

            proxy.restore()  # the server answers: the next attempt opens the pool
            deadline = time.monotonic() + DEADLINE
            while (r := await http.get("/late")).status_code != 200:
                assert time.monotonic() < deadline, r.text
                await asyncio.sleep(0.05)
            assert (await http.get("/late/inline")).json()["kind"] == "served"
            health = (await http.get("/health")).json()
            assert health["pools"]["late"] == {"status": "up"}
            assert heal_tasks() == []
    assert m.pool("late").closed
    assert m.pool("late").outage is None


@only(kinds=("sql",), exclude=("postgres", "mysql-aiomysql", "mysql-asyncmy"))
async def test_a_sqlite_pool_whose_volume_is_not_there_yet_heals(
        target: Target, managers: list[ConnectionManager], tmp_path: Path) -> None:
    volume = tmp_path / "volume"  # mounted later: "unable to open database file" until then
    m = ConnectionManager({"late": {"url": f"sqlite+aiosqlite:///{volume}/app.db",
                                    "required": False, "connect_timeout": 1}})
    managers.append(m)
    async with m:
        with pytest.raises(ServerUnavailable, match="unreachable since") as info:
            async with m.session("late"):
                pass
        assert info.value.kind == "down"
        volume.mkdir()
        deadline = time.monotonic() + DEADLINE
        while m.pool("late").closed:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        async with m.session("late") as db:
            await Ops(target).select1(db)


async def test_a_required_pool_still_fails_startup_and_leaves_nothing_trying(
        managers: list[ConnectionManager], tmp_path: Path) -> None:
    with TcpProxy("127.0.0.1", 9) as proxy:
        proxy.cut()
        m = ConnectionManager({
            "main": {"url": f"postgresql+asyncpg://u:pw@127.0.0.1:{proxy.port}/db",
                     "connect_timeout": 1},
            "extra": {"url": f"postgresql+asyncpg://u:pw@127.0.0.1:{proxy.port}/db2",
                      "connect_timeout": 1, "required": False}})
        managers.append(m)
        with pytest.raises(PoolStartupError, match="pool 'main'"):
            await m.open()
        assert heal_tasks() == []
        assert m.pool("extra").outage is None


async def test_closing_stops_the_background_attempts(
        managers: list[ConnectionManager], tmp_path: Path) -> None:
    with TcpProxy("127.0.0.1", 9) as proxy:
        proxy.cut()
        m = ConnectionManager({
            "main": {"url": f"sqlite+aiosqlite:///{tmp_path}/m.db"},
            "extra": {"url": f"postgresql+asyncpg://u:pw@127.0.0.1:{proxy.port}/db",
                      "connect_timeout": 1, "required": False}})
        managers.append(m)
        async with m:
            assert heal_tasks() == ["connman-heal-extra"]
        assert heal_tasks() == []
        with pytest.raises(PoolClosed, match="shutting down") as info:
            async with m.session("extra"):
                pass
        assert not isinstance(info.value, PoolNotOpen)  # the lifespan ran: no test-tooling hint


async def test_a_pool_whose_lifespan_never_ran_still_says_so(tmp_path: Path) -> None:
    m = ConnectionManager({"main": {"url": f"sqlite+aiosqlite:///{tmp_path}/m.db"}})
    with pytest.raises(PoolNotOpen, match="lifespan did not run"):
        async with m.session("main"):
            pass


@only()
async def test_an_app_lifespan_that_fails_after_the_pools_opened_raises_its_own_error(
        target: Target, managers: list[ConnectionManager]) -> None:
    ops = Ops(target)
    m = ConnectionManager({"main": target.config(size=2)})
    managers.append(m)

    @asynccontextmanager
    async def app_lifespan(app: Any) -> AsyncIterator[None]:
        async with m.session("main") as unit:
            await ops.select1(unit)
        raise RuntimeError("seed data missing: refusing to start")
        yield  # pragma: no cover

    app = FastAPI(lifespan=m.wrap_lifespan(app_lifespan))
    with pytest.raises(RuntimeError, match="seed data missing"):
        async with app.router.lifespan_context(app):
            pass
    assert m.pool("main").closed
    assert m.stats("main")["pool_size"] == 0


@pytest.mark.postgres
async def test_a_second_open_while_a_pool_heals_takes_over_from_its_attempts(
        postgres_server: Any, managers: list[ConnectionManager], tmp_path: Path) -> None:
    with TcpProxy(postgres_server.host, postgres_server.port) as proxy:
        proxy.cut()
        url = postgres_server.url(driver="asyncpg").replace(
            f":{postgres_server.port}/", f":{proxy.port}/")
        m = ConnectionManager({"main": {"url": f"sqlite+aiosqlite:///{tmp_path}/m.db"},
                               "late": {"url": url, "size": 1, "connect_timeout": 1,
                                        "required": False}})
        managers.append(m)
        async with m:
            assert heal_tasks() == ["connman-heal-late"]
            proxy.restore()
            await m.open()  # opens "late" itself, the background attempts stop
            assert heal_tasks() == []
            assert (await m.pool("late").probe(5))["status"] == "up"
            async with m.session("late") as db:
                await db.execute(text("SELECT 1"))


@only(exclude=("sqlite",))
async def test_an_optional_pool_whose_server_is_frozen_at_startup_heals_when_it_answers(
        target: Target, managers: list[ConnectionManager], tmp_path: Path) -> None:
    ops = Ops(target)
    with TcpProxy("127.0.0.1", target.server.port) as proxy:  # type: ignore[union-attr]
        proxy.blackhole()  # connects are accepted and never answered
        m = ConnectionManager({
            "main": {"url": f"sqlite+aiosqlite:///{tmp_path}/main.db", "size": 1},
            "late": target.config(url=via(target, proxy), size=1, overflow=0, timeout=2,
                                  connect_timeout=1, required=False)})
        managers.append(m)
        async with m:  # startup is not held up past the attempt's own bound
            with pytest.raises(ServerUnavailable, match="unreachable since"):
                async with m.session("late"):
                    pass
            proxy.restore()
            deadline = time.monotonic() + DEADLINE
            while m.pool("late").closed:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            async with m.session("late") as unit:
                await ops.select1(unit)


async def test_a_late_pool_never_shows_its_password(
        managers: list[ConnectionManager], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="connman")
    with TcpProxy("127.0.0.1", 9) as proxy:
        proxy.cut()
        m = ConnectionManager({
            "main": {"url": f"sqlite+aiosqlite:///{tmp_path}/m.db"},
            "late": {"url": f"postgresql+asyncpg://app:s3cret-pw@127.0.0.1:{proxy.port}/db",
                     "connect_timeout": 1, "required": False}})
        managers.append(m)
        app = FastAPI(lifespan=m.lifespan)
        app.include_router(m.health_router(detail=True))
        async with m:
            with pytest.raises(ServerUnavailable) as info:
                async with m.session("late"):
                    pass
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                health = (await http.get("/health")).text
        seen = [str(info.value), repr(info.value), str(info.value.__cause__), health,
                caplog.text]
        assert all("s3cret-pw" not in text for text in seen)
        assert "app:***@" in str(info.value)
