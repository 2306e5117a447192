"""A newcomer's first day (issue 24): the FastAPI patterns they bring, their first wrong setting.

Websocket routes, `on_event` handlers under `lifespan=manager.lifespan`, a leak warning that names
the route, settings refused before the first connection, `connman check --app`, `connman size
--measure --query`, and what the package ships.
"""

from __future__ import annotations

import asyncio
import json
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
                assert "handler" not in detail  # the handler's module path stays in the log
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

    @app.post("/exports")
    async def export(db: Any = Depends(m.session("main"))) -> dict[str, bool]:
        async with m.session("main") as inner:  # opened in the handler, same request
            leaks = m.stats("main")["leaks_detected"]
            async with asyncio.timeout(20):  # until both units' leak timers fired
                while leaks < 3:  # 1 from /reports, then the dependency's and this one's
                    await asyncio.sleep(0.02)
                    leaks = m.stats("main")["leaks_detected"]
            assert inner is not db
        return {"ok": True}

    with caplog.at_level(logging.WARNING, logger="connman"):
        async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as http:
            r = await http.get("/reports/7")
            assert r.status_code == 200
            warning = next(r.getMessage() for r in caplog.records
                           if "leak_threshold" in r.getMessage())
            assert "by GET /reports/{report_id}" in warning
            assert "slow_report" in warning
            caplog.clear()
            r = await http.post("/exports")
            assert r.status_code == 200
    warnings_ = [r.getMessage() for r in caplog.records if "leak_threshold" in r.getMessage()]
    assert len(warnings_) == 2
    assert all("by POST /exports" in w for w in warnings_)


# ---------------------------------------------------------------- the first wrong setting
SECRET = "p@ss#word"


@pytest.mark.parametrize(("url", "says"), [
    (f"postgresql+asyncpg://app:{SECRET}@127.0.0.1:5432/app", "contains '@' unencoded"),
    ("postgresql+asyncpg://app:pass#word@127.0.0.1/app", "contains '#' unencoded"),
    ("postgresql+asyncpg://app:pa/ss@127.0.0.1/app", "contains '/' unencoded"),
    ("mysql+aiomysql://app:pa?ss@127.0.0.1/app", "contains '?' unencoded"),
    (f"mongodb://app:{SECRET}@127.0.0.1:27017/app", "contains '@' unencoded"),
    ("postgresql+asyncpg://app:x@127.0.0.1:notaport/app", "port 'notaport'"),
    ("postgresql+asyncpg://app:x@127.0.0.1:70000/app", "port '70000'"),
    ("mongodb://u:pw@h1:27017,h2:nope/app", "port 'nope'"),
    ("mongodb://app:pass#word/app", "the '@host' after it is missing"),  # never quoted
    ("postgresql+asyncpg://h:5432/db?application_name=a@b", "'@' in the query is %40"),
])
def test_a_url_the_driver_would_read_otherwise_is_refused_in_one_line(url: str, says: str) -> None:
    from connman import ConfigurationError

    with pytest.raises(ConfigurationError) as info:
        ConnectionManager({"main": url})
    message = str(info.value)
    assert message.startswith("pool 'main': url: ")
    assert says in message
    assert "\n" not in message
    for secret in (SECRET, "pass#word", "pa/ss", "pa?ss", "ss#word"):
        assert secret not in message
    if "port" not in says and "missing" not in says:
        assert "percent-encode" in message


@pytest.mark.parametrize("url", [
    "postgresql+asyncpg://app:p%40ss%23word@127.0.0.1:5432/app",   # encoded: fine
    "postgresql+asyncpg://app:x@[::1]:5432/app",
    "postgresql+asyncpg://app:x@h/db?application_name=a@b",         # '@' in the query
    "sqlite+aiosqlite:////tmp/a@b.db",                               # '@' in a path
    "mongodb://u:p%40s@h1:27017,h2:27018/app",
    "mongodb+srv://u:p@cluster.example.org/app",
    "mongodb://h:27017/app?appname=a@b",                             # PyMongo: no password here
])
def test_urls_that_read_the_same_everywhere_are_accepted(url: str) -> None:
    ConnectionManager({"main": url})


@pytest.mark.parametrize(("url", "minimum"), [
    ("postgresql+asyncpg://app:x@127.0.0.1/app", "at least 1 on a SQL pool"),
    ("sqlite+aiosqlite:////tmp/x.db", "at least 1 on a SQL pool"),
    ("mongodb://127.0.0.1/app", "at least 0"),
])
def test_size_messages_give_the_minimum_that_really_holds(url: str, minimum: str) -> None:
    from connman import ConfigurationError

    for size in (-1, "-1"):
        with pytest.raises(ConfigurationError, match=minimum):
            ConnectionManager({"main": {"url": url, "size": size}})
    if url.startswith("mongodb"):
        ConnectionManager({"main": {"url": url, "size": 0}})  # what the message allows
    else:
        with pytest.raises(ConfigurationError, match=minimum):
            ConnectionManager({"main": {"url": url, "size": 0}})


@pytest.mark.parametrize("where", ["environment", ".env", "config file"])
async def test_a_wrong_setting_names_pool_field_and_where_it_came_from_at_open(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any, where: str) -> None:
    from connman import ConfigurationError, PoolNotOpen

    monkeypatch.chdir(tmp_path)
    url = f"postgresql+asyncpg://app:{SECRET}@127.0.0.1/app"
    config_file = None
    if where == "environment":
        monkeypatch.setenv("CONNMAN_POOLS__MAIN__URL", url)
        expected = "(from the environment variable CONNMAN_POOLS__MAIN__URL)"
    elif where == ".env":
        (tmp_path / ".env").write_text(f"CONNMAN_POOLS__MAIN__URL={url}\n")
        expected = "(from CONNMAN_POOLS__MAIN__URL in .env)"
    else:
        config_file = tmp_path / "connman.toml"
        config_file.write_text(f'[pools.main]\nurl = "{url}"\n')
        expected = f"(from {config_file})"
    m = ConnectionManager.from_settings(config_file=config_file)  # import: no raise
    with pytest.raises(PoolNotOpen):
        m.pool("main")
    with pytest.raises(ConfigurationError) as info:
        await m.open()
    message = str(info.value)
    assert message.startswith("pool 'main': url: the user name or password contains '@'")
    assert message.endswith(expected)
    assert SECRET not in message
    assert "ss#word" not in message
    assert info.value.pool == "main"
    assert info.value.field == "url"


def test_check_refuses_a_malformed_port_instead_of_marking_it_ok(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from connman.cli import app as cli_app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONNMAN_POOLS__MAIN__URL", "postgresql+asyncpg://u:topsecret@h:notaport/db")
    result = CliRunner().invoke(cli_app, ["check", "--json"])
    assert result.exit_code == 2
    report = json.loads(result.output)
    assert report["ok"] is False
    assert "port 'notaport'" in report["problems"][0]
    assert "CONNMAN_POOLS__MAIN__URL" in report["problems"][0]
    assert "topsecret" not in result.output


# ---------------------------------------------------------------- connman check --app
APP_SOURCE = '''
from typing import Any
from fastapi import APIRouter, Depends, FastAPI
from connman import ConnectionManager

manager = ConnectionManager.from_settings()
app = FastAPI(lifespan=manager.lifespan)
router = APIRouter(prefix="/v1")


def repo(db: Any = Depends(manager.session("main"))) -> Any:
    return db


@router.get("/users")
async def users(r: Any = Depends(repo)) -> list[str]:
    return []


@app.get("/audit")
async def audit(db: Any = Depends(manager.session("audit"))) -> int:
    return 0

app.include_router(router)
'''


@pytest.mark.postgres
@pytest.mark.parametrize("deferred", [False, True], ids=["settings-at-import", "function"])
def test_check_app_fails_when_the_app_uses_a_pool_the_settings_lack(
        postgres_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
        deferred: bool) -> None:
    import uuid

    from typer.testing import CliRunner

    from connman.cli import app as cli_app

    monkeypatch.chdir(tmp_path)
    module = f"newcomer_app_{uuid.uuid4().hex[:8]}"
    source = APP_SOURCE
    if deferred:  # the app's own settings function, read at open()
        source = source.replace("ConnectionManager.from_settings()", "ConnectionManager(lambda: "
                                "{'main': __import__('os').environ['APP_DB']})")
        monkeypatch.setenv("APP_DB", postgres_server.url(driver="asyncpg"))
    else:
        monkeypatch.setenv("CONNMAN_POOLS__MAIN__URL", postgres_server.url(driver="asyncpg"))
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    runner = CliRunner()
    result = runner.invoke(cli_app, ["check", "--json", "--app", f"{module}:app"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["ok"] is False
    problem = next(p for p in report["problems"] if "'audit'" in p)
    assert "the app uses pool 'audit'" in problem
    assert "CONNMAN_POOLS__AUDIT__URL" in problem
    if deferred:
        assert "GET /audit" in problem
        assert [p["pool"] for p in report["pools"]] == ["main"]
        assert report["pools"][0]["status"] == "ok"
    if not deferred:
        # Without --app the same settings look fine, and the report says what it cannot know.
        plain = runner.invoke(cli_app, ["check", "--json"])
        assert plain.exit_code == 0, plain.output
        assert "cannot know which pools the app uses" in json.loads(plain.output)["note"]


@pytest.mark.postgres
def test_check_app_passes_when_every_pool_the_app_uses_is_set(
        postgres_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    import uuid

    from typer.testing import CliRunner

    from connman.cli import app as cli_app

    monkeypatch.chdir(tmp_path)
    module = f"newcomer_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(APP_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("MAIN", "AUDIT"):
        monkeypatch.setenv(f"CONNMAN_POOLS__{name}__URL", postgres_server.url(driver="asyncpg"))
    result = CliRunner().invoke(cli_app, ["check", "--json", "--app", f"{module}:app"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert {p["pool"] for p in report["pools"]} == {"main", "audit"}
    assert report["note"] is None


def test_pools_used_walks_sub_dependencies_and_included_routers() -> None:
    from connman._appscan import pools_used

    m = ConnectionManager({"main": "sqlite+aiosqlite:////tmp/x.db",
                           "docs": "mongodb://127.0.0.1/app"})
    app = FastAPI()

    def repo(db: Any = Depends(m.session("main"))) -> Any:
        return db

    @app.get("/a")
    async def a(r: Any = Depends(repo), d: Any = Depends(m.session("docs", readonly=True))
                ) -> None: ...

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, r: Any = Depends(repo)) -> None: ...

    assert pools_used(app) == {"main": ["GET /a", "WEBSOCKET /ws"], "docs": ["GET /a"]}


# ---------------------------------------------------------------- connman size --measure
@pytest.mark.postgres
def test_size_measure_times_the_apps_statement_and_says_so(
        postgres_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from connman.cli import app as cli_app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONNMAN_POOLS__MAIN__URL", postgres_server.url(driver="asyncpg"))
    runner = CliRunner()
    args = ["size", "--concurrency", "200", "--target-ms", "50", "--measure", "main",
            "--samples", "5", "--json"]
    # pg_sleep(0.02): each unit of work holds its connection at least 20 ms.
    slow = runner.invoke(cli_app, [*args, "--query", "SELECT pg_sleep(0.02)"])
    assert slow.exit_code == 0, slow.output
    advice = json.loads(slow.output)
    assert advice["measured"]["what"] == "query"
    assert advice["measured"]["samples"] == 5
    assert advice["measured"]["mean_ms"] >= 20
    assert advice["query_ms"] == advice["measured"]["mean_ms"]
    assert advice["busy_connections"] >= 80  # 200 × ≥ 20 ms ÷ 50 ms
    assert "your statement" in advice["measured"]["summary"]

    pings = runner.invoke(cli_app, args)
    assert pings.exit_code == 0, pings.output
    measured = json.loads(pings.output)["measured"]
    assert measured["what"] == "ping"
    assert "runs no query" in measured["summary"]
    assert "--query" in measured["summary"]
    human = runner.invoke(cli_app, args[:-1])
    assert "pings on pool 'main'" in human.output

    bad = runner.invoke(cli_app, [*args, "--query", "SELECT * FROM no_such_table"])
    assert bad.exit_code != 0


@pytest.mark.mongo
def test_size_measure_runs_a_mongo_command(mongo_server: Any, monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from connman.cli import app as cli_app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONNMAN_POOLS__DOCS__URL", mongo_server.url(database="app"))
    args = ["size", "--concurrency", "10", "--target-ms", "50", "--measure", "docs",
            "--samples", "3", "--json"]
    result = CliRunner().invoke(cli_app, [*args, "--query", '{"count": "users"}'])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["measured"]["what"] == "query"
    refused = CliRunner().invoke(cli_app, [*args, "--query", "SELECT 1"])
    assert refused.exit_code == 2
    assert "command as JSON" in refused.output


# ---------------------------------------------------------------- missing extras
@pytest.mark.parametrize(("blocked", "argv", "extra"), [
    ("typer", ["check"], "connman[cli]"),
    ("matplotlib", ["bench", "--quick"], "connman[bench]"),
])
def test_a_missing_extra_prints_its_one_line_alone(blocked: str, argv: list[str],
                                                    extra: str, tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    code = (f"import sys; sys.modules[{blocked!r}] = None; sys.argv = ['connman', *{argv!r}]; "
            "from connman._console import main; main()")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 2
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert extra in lines[0]
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- the package
ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def test_the_package_ships_a_license_and_no_repository_only_module() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License")
    assert "connman contributors" in license_text
    assert not (ROOT / "connman" / "docs.py").exists()  # the generator is scripts/docs.py
    assert (ROOT / "scripts" / "docs.py").exists()
    assert project["scripts"]["connman"] == "connman._console:main"
    manifest = (ROOT / "MANIFEST.in").read_text()
    assert "prune tests" in manifest  # no tests without their conftest.py in the sdist


def test_readme_reads_right_on_a_package_index() -> None:
    import re

    readme = (ROOT / "README.md").read_text()
    lines = readme.splitlines()
    assert lines[3].startswith("./scripts/demo")  # the project's rule: these two come first
    assert lines[4].startswith("./scripts/test")
    install = next(line for line in lines if line.startswith("**Install**"))
    assert "pip install 'connman[postgres,mongo,fastapi]'" in install
    links = re.findall(r"\]\(([^)]+)\)", readme)
    assert all(link.startswith("https://") for link in links), links  # no dead relative links
    assert "pip install 'connman[postgres,mongo,fastapi,cli]'" in readme  # next to connman check
    assert "connman.metrics.prometheus import" in readme
