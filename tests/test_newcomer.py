"""A newcomer's first day (issue 24): the FastAPI patterns they bring, their first wrong setting.

Websocket routes, `on_event` handlers under `lifespan=manager.lifespan`, a leak warning that names
the route, settings refused before the first connection, `connman check --app`, `connman size
--measure --query`, and what the package ships.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from connman import ConnectionManager, PoolEvent

from ._targets import Ops, Target, serve
from .conftest import only


def on_event(app: FastAPI, event: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """`app.on_event(event)`, whose DeprecationWarning the suite would turn into an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return app.on_event(event)


# ---------------------------------------------------------------- websockets
@only(exclude=("mysql-asyncmy", "mongo-motor"))
async def test_websocket_route_refuses_a_session_dependency_naming_pool_and_pattern(
        managers: list[ConnectionManager], target: Target,
        caplog: pytest.LogCaptureFixture) -> None:
    ops = Ops(target)
    m = ConnectionManager({"main": target.config(size=1, overflow=0, timeout=0.5)})
    managers.append(m)
    app = FastAPI(lifespan=m.lifespan)

    @app.websocket("/ws/held")
    async def held(websocket: WebSocket, db: Any = Depends(m.session("main"))) -> None:
        await websocket.accept()  # never reached: the dependency refuses first

    @app.websocket("/ws/readonly")
    async def readonly(websocket: WebSocket,
                       db: Any = Depends(m.session("main", readonly=True, scope="request"))
                       ) -> None:
        await websocket.accept()

    @app.websocket("/ws/per-message")
    async def per_message(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                key = await websocket.receive_text()
                async with m.session("main") as db:  # the documented pattern
                    await ops.insert(db, key)
                await websocket.send_text("saved")
        except WebSocketDisconnect:
            pass

    @app.get("/keys")
    async def keys(db: Any = Depends(m.session("main"))) -> list[str]:
        return sorted(await ops.keys(db))

    with caplog.at_level(logging.ERROR, logger="connman"):
        async with serve(app) as base:
            async with m.session("main") as db:
                await ops.create(db)
            before = m.stats("main")["requests_num"]
            ws_base = base.replace("http://", "ws://")
            for path in ("/ws/held", "/ws/readonly"):
                with pytest.raises(InvalidStatus) as refused:
                    await connect(ws_base + path, open_timeout=10)
                response = refused.value.response
                assert response.status_code == 503
                assert "retry-after" not in {k.lower() for k in response.headers}
                detail = response.body.decode()
                assert "pool 'main'" in detail
                assert "async with manager.session('main') as db:" in detail
                assert path in detail
            assert m.stats("main")["requests_num"] == before  # refused before any checkout

            # The pattern the error names holds nothing between messages: with two sockets open
            # on a pool of one, an HTTP request is served and sees both writes.
            sockets = [await connect(ws_base + "/ws/per-message", open_timeout=10)
                       for _ in range(2)]
            try:
                for i, ws in enumerate(sockets):
                    await ws.send(f"k{i}")
                    assert await asyncio.wait_for(ws.recv(), 10) == "saved"
                assert m.stats("main")["requests_active"] == 0
                async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                    r = await http.get("/keys")
                assert r.status_code == 200
                assert r.json() == ["k0", "k1"]
            finally:
                for ws in sockets:
                    await ws.close()
    logged = [r.getMessage() for r in caplog.records if r.name == "connman"]
    assert any("WEBSOCKET /ws/held" in line and "per message" in line for line in logged)


@only(kinds=("mongo",), exclude=("mongo-motor",))
async def test_websocket_refusal_through_starlette_testclient(target: Target) -> None:
    from starlette.testclient import TestClient, WebSocketDenialResponse

    m = ConnectionManager({"docs": target.config()})
    app = FastAPI(lifespan=m.lifespan)

    @app.websocket("/chat")
    async def chat(websocket: WebSocket, db: Any = Depends(m.session("docs"))) -> None:
        await websocket.accept()

    def run() -> tuple[int, str]:
        with TestClient(app) as client:
            try:
                with client.websocket_connect("/chat"):
                    return 0, "accepted"
            except WebSocketDenialResponse as denial:
                return denial.status_code, denial.json()["detail"]

    status, detail = await asyncio.to_thread(run)
    assert status == 503
    assert "pool 'docs'" in detail
    assert "async with manager.session('docs')" in detail
    assert m.pool("docs").closed


# ---------------------------------------------------------------- on_event handlers
@only(kinds=("sql", "mongo"), exclude=("mysql-aiomysql", "mysql-asyncmy", "mongo-motor"))
@pytest.mark.parametrize("wrap", [False, True], ids=["lifespan", "wrap_lifespan"])
async def test_on_event_handlers_run_inside_the_managers_lifespan(
        managers: list[ConnectionManager], target: Target, wrap: bool) -> None:
    from contextlib import asynccontextmanager

    ops = Ops(target)
    m = ConnectionManager({"main": target.config()})
    managers.append(m)
    ran: list[str] = []

    @asynccontextmanager
    async def own(app: Any) -> Any:
        ran.append("own lifespan in")
        yield {"mine": 1}
        ran.append("own lifespan out")

    app = FastAPI(lifespan=m.wrap_lifespan(own) if wrap else m.lifespan)

    @on_event(app, "startup")
    async def make_table() -> None:
        async with m.session("main") as db:  # the pools are open when it runs
            await ops.create(db)
        ran.append("startup")

    @on_event(app, "startup")
    def sync_hook() -> None:
        ran.append("sync startup")

    @on_event(app, "shutdown")
    async def bye() -> None:
        assert not m.pool("main").closed  # before the pools close
        ran.append("shutdown")

    async with app.router.lifespan_context(app) as state:
        async with m.session("main") as db:
            assert await ops.keys(db) == set()
        assert state["connman"] is m
    expected = ["startup", "sync startup", "shutdown"]
    if wrap:
        expected = ["startup", "sync startup", "own lifespan in", "own lifespan out", "shutdown"]
    assert ran == expected
    assert m.pool("main").closed


@only(kinds=("mongo",), exclude=("mongo-motor",))
async def test_a_failing_on_event_startup_handler_fails_startup_and_closes_the_pools(
        target: Target) -> None:
    m = ConnectionManager({"main": target.config()})
    app = FastAPI(lifespan=m.lifespan)

    @on_event(app, "startup")
    async def broken() -> None:
        raise RuntimeError("index build refused")

    with pytest.raises(RuntimeError, match="index build refused"):
        async with app.router.lifespan_context(app):
            pass
    assert m.pool("main").closed
    assert m.stats("main")["pool_size"] == 0


async def test_on_event_handlers_are_not_run_twice_under_fastapis_default_lifespan() -> None:
    from connman._app import event_handlers

    app = FastAPI()

    @on_event(app, "startup")
    def hook() -> None: ...

    assert event_handlers(app) == ([], [])  # FastAPI's default lifespan runs them itself
    assert event_handlers(object()) == ([], [])


# ---------------------------------------------------------------- leak warnings
@only(exclude=("mysql-aiomysql", "mysql-asyncmy", "mongo-motor"))
async def test_a_leak_warning_names_the_route_that_holds_the_connection(
        managers: list[ConnectionManager], target: Target,
        caplog: pytest.LogCaptureFixture) -> None:
    m = ConnectionManager({"main": target.config(leak_threshold=0.2)})
    managers.append(m)
    leaked = asyncio.Event()

    def on_leak(event: PoolEvent) -> None:
        leaked.set()

    m.on("leak", on_leak)
    app = FastAPI(lifespan=m.lifespan)

    @app.get("/reports/{report_id}")
    async def slow_report(report_id: int, db: Any = Depends(m.session("main"))) -> dict[str, int]:
        await asyncio.wait_for(leaked.wait(), 20)  # hold until the leak timer fired
        return {"id": report_id}

    with caplog.at_level(logging.WARNING, logger="connman"):
        async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as http:
            r = await http.get("/reports/7")
    assert r.status_code == 200
    warning = next(r.getMessage() for r in caplog.records if "leak_threshold" in r.getMessage())
    assert "by GET /reports/{report_id}" in warning
    assert "slow_report" in warning
