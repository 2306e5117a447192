"""The health router over real HTTP: per-pool status, ping, stats; 503 only for required pools."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi import Depends, FastAPI, Header, HTTPException

from connman import ConnectionManager
from connman.testing.proxy import TcpProxy
from connman.testing.servers import MongoWireServer

from ._targets import Target, serve
from .conftest import only


async def test_health_turns_503_when_a_required_pool_is_down_and_200_for_an_optional_one(
        tmp_path: Path, managers: list[ConnectionManager]) -> None:
    with MongoWireServer() as required_srv, MongoWireServer() as optional_srv:
        fast = "serverMonitoringMode=poll&heartbeatFrequencyMS=500"
        m = ConnectionManager({
            "main": {"url": f"sqlite+aiosqlite:///{tmp_path}/h.db"},
            "docs": {"url": required_srv.url(database="app") + "&" + fast, "size": 1,
                     "connect_timeout": 1},
            "cache": {"url": optional_srv.url(database="app") + "&" + fast, "size": 1,
                      "connect_timeout": 1, "required": False},
        })
        managers.append(m)
        app = FastAPI(lifespan=m.lifespan)
        app.include_router(m.health_router(detail=True))
        async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
            r = await client.get("/health")
            assert r.status_code == 200
            body = r.json()
            assert body["status"] == "up"
            assert set(body["pools"]) == {"main", "docs", "cache"}
            assert body["pools"]["main"]["ping_ms"] > 0
            assert "requests_num" in body["pools"]["docs"]["stats"]

            optional_srv.stop()
            r = await client.get("/health")
            assert r.status_code == 200  # an optional pool only reports
            assert r.json()["pools"]["cache"]["status"] == "down"

            required_srv.stop()
            r = await client.get("/health")
            assert r.status_code == 503
            body = r.json()
            assert body["status"] == "down"
            assert body["pools"]["docs"]["status"] == "down"
            assert body["pools"]["main"]["status"] == "up"


@only(exclude=("sqlite",))
async def test_public_health_says_up_busy_down_since_and_shows_no_infrastructure(
        target: Target, managers: list[ConnectionManager]) -> None:
    assert target.server is not None
    with TcpProxy(target.server.host, target.server.port) as proxy:
        url = target.url().replace(f":{target.server.port}", f":{proxy.port}")
        m = ConnectionManager({"main": target.config(url=url, size=1, overflow=0,
                                                      connect_timeout=1, timeout=5)})
        managers.append(m)

        def internal(x_token: str = Header("")) -> None:
            if x_token != "let-me-in":
                raise HTTPException(401, "no")

        app = FastAPI(lifespan=m.lifespan)
        app.include_router(m.health_router(ping_timeout=1.5))
        app.include_router(m.health_router(prefix="/internal/health", detail=True,
                                           dependencies=[Depends(internal)]))
        async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=15) as client:
            assert (await client.get("/health")).json() == {
                "status": "up", "pools": {"main": {"status": "up"}}}
            assert (await client.get("/internal/health")).status_code == 401
            inside = await client.get("/internal/health", headers={"x-token": "let-me-in"})
            assert inside.json()["pools"]["main"]["url"] == m.pool("main").config.url.masked

            async with m.session("main"):  # the only connection in use: busy, not down
                busy = await client.get("/health")
                assert busy.status_code == 200
                assert busy.json()["pools"]["main"] == {"status": "busy"}

            proxy.cut()
            r = await client.get("/health")
            assert r.status_code == 503
            entry = r.json()["pools"]["main"]
            assert entry["status"] == "down"
            assert set(entry) == {"status", "since", "error"}
            assert str(proxy.port) not in r.text  # no host, port or driver words in public
            inside = await client.get("/internal/health", headers={"x-token": "let-me-in"})
            detail = inside.json()["pools"]["main"]
            assert detail["status"] == "down"
            assert detail["since"] == entry["since"]
            assert detail["error"].strip()
            assert "stats" in detail
