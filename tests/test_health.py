"""The health router over real HTTP: per-pool status, ping, stats; 503 only for required pools."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi import FastAPI

from connman import ConnectionManager
from connman.testing.servers import MongoWireServer

from ._targets import serve


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
