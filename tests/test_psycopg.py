"""psycopg 3 specifics, on the real PostgreSQL: what its driver module knows, and the URL forms.

The shared behaviour runs on psycopg as the `postgres-psycopg` target of every parametrised test;
here is what only psycopg has: no command timeout (connman's deadline cancels the statement on the
server), a socket nobody reads while idle (the hang-up check), connections not in autocommit mode,
its error codes, and the URLs that resolve to it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from connman import ConfigurationError, ConnectionManager, StatementTimeout
from connman.backends.drivers import psycopg as driver
from connman.config import PoolConfig
from connman.testing.servers import PostgresServer, free_port

pytestmark = pytest.mark.postgres


async def _admin(server: PostgresServer) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(server.url(), autocommit=True)


async def _running(server: PostgresServer, tag: str) -> int:
    admin = await _admin(server)
    try:
        cur = await admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
            "AND state = 'active'", (tag,))
        row = await cur.fetchone()
        return int(row[0]) if row else 0
    finally:
        await admin.close()


async def _until(check: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


@pytest.mark.parametrize("path", ["session", "fast_path"])
async def test_statement_timeout_cancels_the_statement_on_the_server(
        postgres_server: PostgresServer, managers: list[ConnectionManager], path: str) -> None:
    # psycopg has no command timeout: connman's deadline fails the call, discards the connection
    # and cancels the statement server-side, so it stops holding a backend and its locks.
    tag = f"cm_cancel_{path}"
    m = ConnectionManager({"main": {
        "url": postgres_server.url(driver="psycopg"), "size": 1, "overflow": 0,
        "statement_timeout": 0.5, "options": {"connect_args": {"application_name": tag}}}})
    managers.append(m)
    async with m:
        t0 = time.monotonic()
        with pytest.raises(StatementTimeout) as info:
            if path == "session":
                async with m.session("main") as s:
                    await s.execute(text("SELECT pg_sleep(30)"))
            else:
                async with m.connection("main") as conn:
                    await conn.execute("SELECT pg_sleep(30)")
        assert time.monotonic() - t0 < 10
        assert info.value.pool == "main"
        assert isinstance(info.value.__cause__, Exception)

        async def stopped() -> bool:
            return await _running(postgres_server, tag) == 0

        assert await _until(stopped), "the statement still runs on the server"
        assert m.stats("main")["connections_lost"] >= 1
        async with m.session("main") as s:  # and the pool works on
            assert (await s.execute(text("SELECT 1"))).scalar() == 1


async def test_a_connection_discarded_mid_statement_has_its_statement_cancelled(
        postgres_server: PostgresServer, managers: list[ConnectionManager]) -> None:
    # A task the block did not wait for still runs a statement when the block ends: the
    # connection is terminated (never handed out busy), and the server stops the statement.
    tag = "cm_cancel_left"
    m = ConnectionManager({"main": {
        "url": postgres_server.url(driver="psycopg"), "size": 1, "overflow": 0,
        "options": {"connect_args": {"application_name": tag}}}})
    managers.append(m)
    async with m:
        async with m.connection("main") as conn:
            left = asyncio.ensure_future(conn.execute("SELECT pg_sleep(30)"))

            async def running() -> bool:
                return await _running(postgres_server, tag) == 1

            assert await _until(running)
        with pytest.raises(psycopg.Error):
            await asyncio.wait_for(left, 10)

        async def stopped() -> bool:
            return await _running(postgres_server, tag) == 0

        assert await _until(stopped), "the statement still runs on the server"
        async with m.session("main") as s:
            assert (await s.execute(text("SELECT 1"))).scalar() == 1


async def test_hang_up_is_seen_without_a_round_trip(postgres_server: PostgresServer) -> None:
    conn = await psycopg.AsyncConnection.connect(postgres_server.url())
    try:
        assert not driver.hung_up(conn)
        pid = conn.info.backend_pid
        admin = await _admin(postgres_server)
        try:
            await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        finally:
            await admin.close()

        async def seen() -> bool:
            return driver.hung_up(conn)

        assert await _until(seen)
    finally:
        await conn.close()


async def test_kill_wakes_a_pending_call_at_once(postgres_server: PostgresServer) -> None:
    conn = await psycopg.AsyncConnection.connect(postgres_server.url())
    try:
        pending = asyncio.ensure_future(conn.execute("SELECT pg_sleep(30)"))
        await asyncio.sleep(0.2)
        driver.kill(conn)
        with pytest.raises(psycopg.Error):
            await asyncio.wait_for(pending, 10)
        assert driver.hung_up(conn)
    finally:
        await conn.close()


async def test_errors_are_classified_by_sqlstate(postgres_server: PostgresServer) -> None:
    conn = await psycopg.AsyncConnection.connect(postgres_server.url())
    try:
        await conn.execute("SET default_transaction_read_only = on")
        await conn.commit()
        with pytest.raises(psycopg.Error) as ro:
            await conn.execute("CREATE TEMP TABLE cm_ro (x int)")
        assert driver.classify(ro.value) == "read_only"
        await conn.rollback()
        with pytest.raises(psycopg.Error) as syntax:
            await conn.execute("SELEC 1")
        assert driver.classify(syntax.value) is None
        assert driver.may_be_disconnected(syntax.value) is False
        await conn.rollback()
        admin = await _admin(postgres_server)
        try:
            await admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        finally:
            await admin.close()
        with pytest.raises(psycopg.Error) as lost:
            for _ in range(50):  # the backend ends a moment after it is signalled
                await conn.execute("SELECT 1")
                await conn.rollback()
                await asyncio.sleep(0.05)
        assert driver.classify(lost.value) in ("lost", "ended")
        assert driver.may_be_disconnected(lost.value) is True
    finally:
        await conn.close()
    with pytest.raises(psycopg.OperationalError) as refused:
        await psycopg.AsyncConnection.connect(
            f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", connect_timeout=2)
    assert driver.classify(refused.value) == "unreachable"
    assert driver.classify(ValueError("x")) is None


async def test_full_reset_keeps_psycopg_prepared_statements_usable(
        postgres_server: PostgresServer, managers: list[ConnectionManager]) -> None:
    # DEALLOCATE ALL would drop the statements psycopg prepared (after 5 runs of one query)
    # behind its back: the next run of that query would fail.
    m = ConnectionManager({"main": {"url": postgres_server.url(driver="psycopg"), "size": 1,
                                    "overflow": 0, "reset_on_return": "full"}})
    managers.append(m)
    async with m:
        for i in range(12):
            async with m.session("main") as s:
                got = (await s.execute(text("SELECT CAST(:x AS int) + 1"), {"x": i})).scalar()
                assert got == i + 1
            async with m.connection("main") as conn:
                cur = await conn.execute("SELECT %s::int * 2", (i,))
                assert (await cur.fetchone())[0] == i * 2
        assert m.stats("main")["connections_num"] == 1


async def test_fast_path_runs_in_autocommit_and_sessions_do_not(
        postgres_server: PostgresServer, managers: list[ConnectionManager]) -> None:
    # As asyncpg's connections: a statement is committed unless it runs in `conn.transaction()`.
    # The same connection then serves a session, which must get its transaction back.
    m = ConnectionManager({"main": {"url": postgres_server.url(driver="psycopg"), "size": 1,
                                    "overflow": 0}})
    managers.append(m)
    async with m:
        async with m.connection("main") as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS cm_fast (x int)")
            await conn.execute("TRUNCATE cm_fast")
            await conn.execute("INSERT INTO cm_fast VALUES (1)")  # autocommitted
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await conn.execute("INSERT INTO cm_fast VALUES (2)")
                    raise RuntimeError("undo")
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO cm_fast VALUES (3)")  # left open: rolled back
        with pytest.raises(RuntimeError):
            async with m.session("main") as s:
                await s.execute(text("INSERT INTO cm_fast VALUES (4)"))
                raise RuntimeError("the session's transaction is rolled back")
        async with m.connection("main") as conn:
            cur = await conn.execute("SELECT array_agg(x) FROM cm_fast")
            assert (await cur.fetchone())[0] == [1]
            sleeping = asyncio.ensure_future(conn.execute("SELECT pg_sleep(30)"))
            await asyncio.sleep(0.2)
            await conn.cancel_safe()  # made to run beside another call: not ConcurrentUse
            with pytest.raises(psycopg.errors.QueryCanceled):
                await sleeping
        assert m.stats("main")["connections_num"] == 1


# ---------------------------------------------------------------- URLs people paste
@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
async def test_driverless_postgres_urls_resolve_to_psycopg(
        postgres_server: PostgresServer, managers: list[ConnectionManager], scheme: str) -> None:
    url = postgres_server.url().replace("postgresql://", f"{scheme}://", 1)
    m = ConnectionManager({"main": {"url": url, "size": 1, "overflow": 0}})
    managers.append(m)
    assert m.pool("main").config.driver_name == "psycopg"
    async with m:
        async with m.session("main") as s:
            assert (await s.execute(text("SELECT 1"))).scalar() == 1
        async with m.connection("main") as conn:
            assert type(conn._cm_conn).__module__.startswith("psycopg")


def test_without_psycopg_a_driverless_url_means_asyncpg_and_without_either_it_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import connman._schemes as schemes

    monkeypatch.setattr(schemes, "_installed", lambda module: module == "asyncpg")
    assert PoolConfig(url="postgres://u:pw@db/app").driver_name == "asyncpg"
    monkeypatch.setattr(schemes, "_installed", lambda module: False)
    with pytest.raises(ConfigurationError) as info:
        ConnectionManager({"main": {"url": "postgresql://u:pw@db/app"}})
    assert info.value.pool == "main"
    assert info.value.field == "url"
    assert "connman[psycopg]" in str(info.value)
    assert "pw" not in str(info.value)


@pytest.mark.parametrize("driver_name", ["asyncpg", "psycopg"])
async def test_libpq_multi_host_urls_are_converted_and_fail_over(
        postgres_server: PostgresServer, managers: list[ConnectionManager],
        driver_name: str) -> None:
    # What HA tooling emits: `user@h1:port,h2:port/db`. The first host is down.
    live = postgres_server.url(driver=driver_name)
    head, tail = live.split("@", 1)
    hostport, rest = tail.split("/", 1)
    url = f"{head}@127.0.0.1:{free_port()},{hostport}/{rest}"
    m = ConnectionManager({"main": {"url": url, "size": 1, "overflow": 0, "connect_timeout": 5}})
    managers.append(m)
    assert "host=" in m.pool("main").config.url.get_secret_value()
    async with m, m.session("main") as s:
        assert (await s.execute(text("SELECT 1"))).scalar() == 1


def test_multi_host_urls_are_refused_where_the_driver_takes_one_host() -> None:
    with pytest.raises(ConfigurationError) as info:
        ConnectionManager({"main": {"url": "mysql+aiomysql://u:secretpw@h1:3306,h2:3306/db"}})
    assert info.value.pool == "main"
    assert info.value.field == "url"
    assert "secretpw" not in str(info.value)


def test_the_pq_layer_connman_relies_on_is_there() -> None:
    # Contract: the psycopg.pq names the driver module uses, on both dependency sets.
    from psycopg import capabilities, pq

    for name in ("socket", "status", "transaction_status", "consume_input", "finish",
                 "get_cancel"):
        assert hasattr(pq.PGconn, name), name
    assert pq.ConnStatus.OK is not None
    assert pq.TransactionStatus.ACTIVE is not None
    assert callable(capabilities.has_cancel_safe)
    assert hasattr(psycopg.AsyncConnection, "cancel_safe")


async def test_the_connection_lock_connman_waits_for_is_there(
        postgres_server: PostgresServer) -> None:
    # Contract: `AsyncConnection.lock` is held while an operation runs (terminate waits for it
    # before freeing libpq's connection).
    conn = await psycopg.AsyncConnection.connect(postgres_server.url())
    try:
        assert isinstance(conn.lock, asyncio.Lock)
        assert not conn.lock.locked()
        pending = asyncio.ensure_future(conn.execute("SELECT pg_sleep(0.3)"))
        await asyncio.sleep(0.1)
        assert conn.lock.locked()
        await pending
        assert not conn.lock.locked()
    finally:
        await conn.close()


async def test_the_bench_variants_run_on_psycopg(postgres_server: PostgresServer) -> None:
    # connman's session and fast path against psycopg_pool's own pool, the raw anchor.
    from connman.bench.raw import make_variants
    from connman.bench.targets import BACKENDS, PoolSettings, Target, prepare

    target = Target(BACKENDS["postgres-psycopg"], postgres_server.url(driver="psycopg"))
    await prepare(target)
    settings = PoolSettings(size=2, overflow=1, connect_timeout=5.0)
    variants = make_variants(target, settings)
    assert [type(v).__name__ for v in variants] == [
        "ConnmanVariant", "HandSql", "RawPsycopg", "FastVariant"]
    for v in variants[:3]:  # fast shares connman's pool
        await v.open()
    try:
        for v in variants:
            await v.checkout(1)
            await v.read(1)
            await v.write(1)
            assert await v.hold(0.0) >= 0
        assert variants[2].opened() >= 2  # type: ignore[attr-defined]
    finally:
        for v in variants[:3]:
            await v.close()


def test_check_reports_a_psycopg_pool_with_its_server_limit(
        postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from connman.cli import app as cli_app

    from .test_scaling import cli_env

    dead = f"postgresql+psycopg://u:topsecret@127.0.0.1:{free_port()}/db"
    cli_env(monkeypatch, tmp_path, {"main": postgres_server.url(), "gone": dead})
    monkeypatch.setenv("CONNMAN_POOLS__GONE__CONNECT_TIMEOUT", "1")
    result = CliRunner().invoke(cli_app, ["check", "--json"])
    assert result.exit_code == 1, result.output  # the unreachable pool
    assert "topsecret" not in result.output
    report = json.loads(result.output)
    pools = {p["pool"]: p for p in report["pools"]}
    assert pools["main"]["status"] == "ok"
    assert pools["main"]["driver"] == "psycopg"  # postgresql:// resolved to psycopg
    assert pools["main"]["version"].startswith("15")
    assert pools["gone"]["status"] == "error"
    budget = {b["server"]: b for b in report["budget"]}
    assert budget[f"127.0.0.1:{postgres_server.port}"]["limit"] is not None
