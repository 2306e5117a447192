"""Beyond one process: PgBouncer mode, the connection budget, `connman check` and `connman size`."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from connman import ConnectionManager
from connman.budget import compute_budget, server_limit, size_advice
from connman.cli import app as cli_app
from connman.config import PoolConfig
from connman.testing.servers import PgBouncerServer, PostgresServer, Server

from ._targets import Target


async def hammer(m: ConnectionManager, n: int = 300, concurrency: int = 30) -> tuple[int, list[str]]:
    """Run `n` parameterised queries (prepared statements under asyncpg) at `concurrency`."""
    ok = 0
    errors: list[str] = []
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        nonlocal ok
        async with sem:
            try:
                async with m.session("main") as db:
                    got = (await db.execute(text("SELECT CAST(:x AS int) + 1"), {"x": i})).scalar()
                    assert got == i + 1
                    await db.execute(text("SELECT CAST(:y AS text)"), {"y": str(i)})
                ok += 1
            except Exception as exc:
                errors.append(type(exc).__name__ + ": " + str(exc)[:120])

    await asyncio.gather(*(one(i) for i in range(n)))
    return ok, errors


def pgbouncer_version() -> tuple[int, ...]:
    out = subprocess.run(["/usr/sbin/pgbouncer", "--version"], capture_output=True, text=True,
                         check=False).stdout
    m = re.search(r"(\d+)\.(\d+)", out)
    return (int(m[1]), int(m[2])) if m else (0, 0)


@pytest.mark.pgbouncer
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_pgbouncer_transaction_mode_needs_and_gets_the_pooler_setting(
        pgbouncer_server: Server, managers: list[ConnectionManager], driver: str) -> None:
    url = pgbouncer_server.url(driver=driver)
    good = ConnectionManager({"main": {"url": url, "size": 5, "overflow": 10,
                                       "external_pooler": "pgbouncer"}})
    managers.append(good)
    async with good:
        ok, errors = await hammer(good)
        # The fast path too: the same statement often enough that psycopg would prepare it.
        for i in range(8):
            async with good.connection("main") as conn:
                if driver == "asyncpg":
                    assert await conn.fetchval("SELECT $1::int + 1", i) == i + 1
                else:
                    cur = await conn.execute("SELECT %s::int + 1", (i,))
                    assert (await cur.fetchone())[0] == i + 1
    assert errors == []
    assert ok == 300
    opts = good.pool("main").driver_options()["connect_args"]
    if driver == "asyncpg":
        assert opts["statement_cache_size"] == 0
        assert opts["prepared_statement_cache_size"] == 0
    else:  # psycopg prepares nothing at all
        assert opts["prepare_threshold"] is None


@pytest.mark.pgbouncer
# SQLAlchemy 2.0.30 drops some connections it invalidated on these errors without closing them.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_without_the_pooler_setting_transaction_mode_breaks_prepared_statements(
        pgbouncer_server: Server, managers: list[ConnectionManager]) -> None:
    if pgbouncer_version() >= (1, 21):
        return  # max_prepared_statements may make plain asyncpg work; nothing to show
    plain = ConnectionManager({"main": {"url": pgbouncer_server.url(driver="asyncpg"),
                                        "size": 5, "overflow": 10}})
    managers.append(plain)
    async with plain:
        _, errors = await hammer(plain)
    assert errors, "expected prepared-statement errors through transaction pooling"
    assert any("prepared statement" in e for e in errors)


@pytest.mark.pgbouncer
async def test_pgbouncer_session_mode(postgres_server: PostgresServer,
                                      managers: list[ConnectionManager]) -> None:
    with PgBouncerServer(postgres_server, pool_mode="session") as bouncer:
        m = ConnectionManager({"main": {"url": bouncer.url(driver="asyncpg"), "size": 3,
                                        "overflow": 2, "external_pooler": "pgbouncer"}})
        managers.append(m)
        async with m:
            ok, errors = await hammer(m, n=100, concurrency=10)
        assert (ok, errors) == (100, [])


def test_budget_counts_pools_per_server_times_workers_and_replicas() -> None:
    pg = "postgresql+asyncpg://u@db:5432/a"
    configs = {
        "main": PoolConfig(url=pg, size=10, overflow=20),  # type: ignore[arg-type]
        "reports": PoolConfig(url=pg, size=2, overflow=0),  # type: ignore[arg-type]
        "docs": PoolConfig(url="mongodb://m:27017/d", size=5, overflow=5),  # type: ignore[arg-type]
    }
    lines = {line.server: line for line in compute_budget(
        configs, {"db:5432": 97}, workers=4, replicas=2)}
    assert lines["db:5432"].per_process == 32
    assert lines["db:5432"].total == 256
    assert lines["db:5432"].over
    assert lines["m:27017"].limit is None
    assert not lines["m:27017"].over


def test_size_advice_follows_the_rule_of_thumb() -> None:
    advice = size_advice(concurrency=200, query_ms=5, target_ms=50, workers=4)
    assert advice["busy_connections"] == 20
    assert (advice["size"], advice["overflow"]) == (5, 3)
    capped = size_advice(concurrency=2000, query_ms=10, target_ms=20, workers=8, limit=100)
    assert capped["capped"]
    assert capped["total_max"] <= 100


@pytest.mark.postgres
async def test_startup_warns_when_the_budget_exceeds_max_connections(
        postgres_server: Server, caplog: pytest.LogCaptureFixture,
        managers: list[ConnectionManager]) -> None:
    m = ConnectionManager({"main": {"url": postgres_server.url(driver="asyncpg"), "size": 1,
                                    "overflow": 9}}, workers=50)
    managers.append(m)
    with caplog.at_level(logging.WARNING, logger="connman"):
        async with m:
            pass
    warning = [r.getMessage() for r in caplog.records if "connman check" in r.getMessage()]
    assert len(warning) == 1
    assert "500 connections" in warning[0]
    assert "50 workers" in warning[0]


async def test_warm_up_reads_the_same_limit_as_server_info(
        make_manager: Callable[..., ConnectionManager], target: Target) -> None:
    """The startup budget check uses the limit read while warming up, with no round trip of its
    own: it must be what the full `server_info()` query reports."""
    m = make_manager(size=2)
    async with m:
        pool = m.pool("main")
        expected = server_limit(await pool.server_info())
        assert pool.connection_limit == expected
        if target.driver in ("asyncpg", "psycopg", "aiomysql", "asyncmy"):
            assert expected is not None  # the test servers run with max_connections=200
            assert 150 < expected <= 200


def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pools: dict[str, str]) -> None:
    monkeypatch.chdir(tmp_path)
    for name, url in pools.items():
        monkeypatch.setenv(f"CONNMAN_POOLS__{name.upper()}__URL", url)


@pytest.mark.postgres
@pytest.mark.mongo
def test_check_connects_every_pool_and_reports_options_version_and_budget(
        postgres_server: Server, mongo_server: Server, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    cli_env(monkeypatch, tmp_path, {
        "main": postgres_server.url(driver="asyncpg"),
        "docs": mongo_server.url(database="app"),
        "local": f"sqlite+aiosqlite:///{tmp_path}/x.db",
    })
    runner = CliRunner()
    result = runner.invoke(cli_app, ["check", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    pools = {p["pool"]: p for p in report["pools"]}
    assert set(pools) == {"main", "docs", "local"}
    assert all(p["status"] == "ok" for p in pools.values())
    assert pools["main"]["version"].startswith("15")
    # SQLAlchemy's queue holds size + overflow; connman closes the surplus once idle.
    assert (pools["main"]["options"]["pool_size"], pools["main"]["options"]["max_overflow"]) == (
        15, 0)
    assert pools["docs"]["options"]["maxPoolSize"] == 15
    assert pools["main"]["ping_ms"] > 0
    budget = {b["server"]: b for b in report["budget"]}
    pg = budget[f"127.0.0.1:{postgres_server.port}"]
    assert pg["limit"] is not None
    assert not pg["over"]
    # Too many workers for the server's max_connections: a problem, exit code 1.
    over = runner.invoke(cli_app, ["check", "--json", "--workers", "100"])
    assert over.exit_code == 1
    assert any("accepts" in p for p in json.loads(over.output)["problems"])
    human = runner.invoke(cli_app, ["check"])
    assert human.exit_code == 0
    assert "pool 'main'" in human.output
    assert "connection budget" in human.output


def test_check_reports_a_bad_config_naming_pool_and_field(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    cli_env(monkeypatch, tmp_path, {"main": "postgresql+asyncpg://u:topsecret@h/db"})
    monkeypatch.setenv("CONNMAN_POOLS__MAIN__SIZE", "-4")
    result = CliRunner().invoke(cli_app, ["check"])
    assert result.exit_code == 2
    assert "pool 'main'" in result.output
    assert "size" in result.output
    assert "topsecret" not in result.output


def test_check_reports_an_unreachable_pool(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    from connman.testing.servers import free_port

    port = free_port()
    cli_env(monkeypatch, tmp_path, {"main": f"postgresql+asyncpg://u:topsecret@127.0.0.1:{port}/db"})
    monkeypatch.setenv("CONNMAN_POOLS__MAIN__CONNECT_TIMEOUT", "1")
    result = CliRunner().invoke(cli_app, ["check", "--json"])
    assert result.exit_code == 1
    report: dict[str, Any] = json.loads(result.output)
    assert report["pools"][0]["status"] == "error"
    assert "topsecret" not in result.output


def test_size_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli_app, ["size", "--concurrency", "200", "--query-ms", "5",
                                          "--target-ms", "50", "--workers", "4", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["size"] == 5


@pytest.mark.postgres
def test_size_measures_query_time_on_a_live_pool(postgres_server: Server,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    cli_env(monkeypatch, tmp_path, {"main": postgres_server.url(driver="asyncpg")})
    result = CliRunner().invoke(cli_app, ["size", "--concurrency", "100", "--target-ms", "20",
                                          "--measure", "main", "--workers", "2", "--json"])
    assert result.exit_code == 0, result.output
    advice = json.loads(result.output)
    assert advice["query_ms"] > 0
    assert advice["limit"] is not None
