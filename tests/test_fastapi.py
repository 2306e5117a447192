"""FastAPI over real HTTP (uvicorn): lifespan, Depends(manager.session(...)), 503 + Retry-After."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import text

from connman import ConnectionManager

from ._targets import Ops, Target, serve


def build_app(m: ConnectionManager, ops: Ops) -> FastAPI:
    app = FastAPI(lifespan=m.lifespan)
    app.include_router(m.health_router(detail=True))

    @app.post("/items/{key}")
    async def create(key: str, fail: bool = False,
                     unit: Any = Depends(m.session("main"))) -> dict[str, str]:
        await ops.insert(unit, key)
        if fail:
            raise HTTPException(409, "refused after the write")
        return {"key": key}

    @app.get("/items")
    async def items(unit: Any = Depends(m.session("main"))) -> list[str]:
        return sorted(await ops.keys(unit))

    @app.get("/slow")
    async def slow(unit: Any = Depends(m.session("main"))) -> dict[str, bool]:
        await ops.slow(unit, 0.5)
        return {"ok": True}

    return app


async def test_request_commits_before_the_response_and_rolls_back_on_error(
        managers: list[ConnectionManager], target: Target) -> None:
    ops = Ops(target)
    m = ConnectionManager({"main": target.config()})
    managers.append(m)
    app = build_app(m, ops)
    async with serve(app) as base, httpx.AsyncClient(base_url=base) as client:
        async with m.session("main") as unit:
            await ops.create(unit)
        r = await client.post("/items/a")
        assert r.status_code == 200
        # Visible to a new session as soon as the response arrived: committed before it was sent.
        async with m.session("main") as unit:
            assert await ops.keys(unit) == {"a"}
        r = await client.post("/items/b", params={"fail": True})
        assert r.status_code == 409
        keys = (await client.get("/items")).json()
        if target.is_sql:
            assert keys == ["a"]  # the failed request's write was rolled back
        health = (await client.get("/health")).json()
        assert health["status"] == "up"
        assert health["pools"]["main"]["stats"]["requests_active"] == 0
    assert m.pool("main").closed  # shutdown ran through the lifespan


async def test_exhausted_pool_answers_503_with_retry_after(managers: list[ConnectionManager],
                                                           target: Target) -> None:
    ops = Ops(target)
    m = ConnectionManager({"main": target.config(size=1, overflow=0, timeout=0.2)})
    managers.append(m)
    app = build_app(m, ops)
    async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        responses = await asyncio.gather(*(client.get("/slow") for _ in range(4)))
        codes = sorted(r.status_code for r in responses)
        assert codes[0] == 200
        assert 503 in codes
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["retry-after"] == "1"
        assert "'main'" in busy.json()["detail"]
        assert m.stats("main")["requests_timeouts"] == codes.count(503)


@pytest.mark.postgres
async def test_failed_commit_is_a_5xx_not_a_200(managers: list[ConnectionManager],
                                                postgres_server: Any) -> None:
    url = postgres_server.url(driver="asyncpg")
    m = ConnectionManager({"main": {"url": url, "size": 1, "overflow": 1}})
    managers.append(m)
    app = FastAPI(lifespan=m.lifespan)

    @app.post("/dup")
    async def dup(db: Any = Depends(m.session("main"))) -> dict[str, bool]:
        # A deferred constraint fails at COMMIT, after the handler returned.
        await db.execute(text("INSERT INTO deferred_t VALUES (1), (1)"))
        return {"ok": True}

    async with serve(app) as base, httpx.AsyncClient(base_url=base) as client:
        async with m.session("main") as db:
            await db.execute(text("DROP TABLE IF EXISTS deferred_t"))
            await db.execute(text("CREATE TABLE deferred_t (x int, "
                                  "CONSTRAINT u UNIQUE (x) DEFERRABLE INITIALLY DEFERRED)"))
        r = await client.post("/dup")
        assert r.status_code == 500
        async with m.session("main") as db:
            assert (await db.execute(text("SELECT count(*) FROM deferred_t"))).scalar() == 0
        assert m.stats("main")["requests_active"] == 0


async def test_wrap_lifespan_runs_the_apps_own_lifespan_inside(
        managers: list[ConnectionManager], target: Target) -> None:
    from contextlib import asynccontextmanager

    m = ConnectionManager({"main": target.config()})
    managers.append(m)
    seen: list[str] = []

    @asynccontextmanager
    async def own(app: FastAPI) -> Any:
        seen.append("open" if not m.pool("main").closed else "closed")
        yield {"mine": 1}
        seen.append("stop")

    app = FastAPI(lifespan=m.wrap_lifespan(own))

    @app.get("/")
    async def root(unit: Any = Depends(m.session("main"))) -> dict[str, bool]:
        await Ops(target).select1(unit)
        return {"ok": True}

    async with serve(app) as base, httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/")).status_code == 200
    assert seen == ["open", "stop"]
