"""Credentials that rotate: the `credentials` provider and SQLAlchemy's `do_connect` recipe, on a
real PostgreSQL and MariaDB whose login password is changed (`ALTER ROLE` / `ALTER USER`) and whose
connections are then ended server-side, on every driver (asyncpg, aiomysql, asyncmy) and path
(session, fast path, replica, health probe, warm-up)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import traceback
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from pydantic import SecretStr
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from connman import (
    ConfigurationError,
    ConnectionManager,
    ConnectTarget,
    PoolConfig,
    PoolStartupError,
    ServerUnavailable,
)
from connman.backends.sqlalchemy import ALIVE_BYPASS_S
from connman.testing.servers import PostgresServer, Server

DRIVERS = [pytest.param("asyncpg", id="asyncpg", marks=pytest.mark.postgres),
           pytest.param("psycopg", id="psycopg", marks=pytest.mark.postgres),
           pytest.param("aiomysql", id="aiomysql", marks=pytest.mark.mysql),
           pytest.param("asyncmy", id="asyncmy", marks=pytest.mark.mysql)]
PG_DRIVERS = ("asyncpg", "psycopg")
SECRET = "vault-token-s3cr3t"  # what a failing provider's message quotes: must never surface


class Login:
    """A login (PostgreSQL role, MariaDB user) whose password a test rotates, and the app's
    credential source (a dict here, a secrets client in real life)."""

    def __init__(self, driver: str, server: Server, user: str) -> None:
        self.driver = driver
        self.server = server
        self.user = user
        self.password = f"pw-{uuid.uuid4().hex[:12]}"

    @property
    def pg(self) -> bool:
        return self.driver in PG_DRIVERS

    def url(self, password: str | None = None) -> str:
        """The pool URL: this login as the user, with `password` (or none) in it."""
        base = self.server.url(driver=self.driver)
        scheme, rest = base.split("://", 1)
        hostpart = rest.split("@", 1)[1]
        auth = self.user if password is None else f"{self.user}:{password}"
        return f"{scheme}://{auth}@{hostpart}"

    async def admin(self, sql: str, *args: Any) -> list[Any]:
        if self.pg:
            import asyncpg

            conn = await asyncpg.connect(self.server.url())
            try:
                return [tuple(r) for r in await conn.fetch(sql, *args)]
            finally:
                await conn.close()
        import aiomysql

        conn = await aiomysql.connect(host=self.server.host, port=self.server.port, user="root",
                                      db="connman", autocommit=True)
        try:
            async with conn.cursor() as cur:
                await cur.execute(sql, args or None)
                return list(await cur.fetchall())
        finally:
            conn.close()

    async def create(self) -> None:
        if self.pg:
            await self.admin(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'")
        else:
            await self.admin(f"CREATE USER '{self.user}'@'%' IDENTIFIED BY '{self.password}'")
            await self.admin(f"GRANT ALL ON connman.* TO '{self.user}'@'%'")

    async def rotate(self) -> str:
        """A new password on the server and in the source; returns the old one."""
        old, self.password = self.password, f"pw-{uuid.uuid4().hex[:12]}"
        if self.pg:
            await self.admin(f"ALTER ROLE {self.user} PASSWORD '{self.password}'")
        else:
            await self.admin(f"ALTER USER '{self.user}'@'%' IDENTIFIED BY '{self.password}'")
        return old

    async def sessions(self) -> list[Any]:
        if self.pg:
            return [r[0] for r in await self.admin(
                "SELECT pid FROM pg_stat_activity WHERE usename = $1", self.user)]
        return [r[0] for r in await self.admin(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", self.user)]

    async def terminate(self) -> None:
        """End every connection of this login server-side (as a recycle, a failover or a
        restart would) and wait until the server shows none, then until connman's pre-ping is
        sure to run on the next checkout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while ids := await self.sessions():
            for sid in ids:
                if self.pg:
                    await self.admin("SELECT pg_terminate_backend($1)", sid)
                else:
                    with contextlib.suppress(Exception):  # it ended by itself meanwhile
                        await self.admin(f"KILL CONNECTION {int(sid)}")
            assert loop.time() < deadline, f"{self.user}'s connections did not end: {ids}"
            await asyncio.sleep(0.05)
        # A connection checked in within ALIVE_BYPASS_S is handed out unpinged: let it pass, so
        # the next checkout pings, sees the connection ended and opens a new one.
        await asyncio.sleep(ALIVE_BYPASS_S + 0.1)

    async def refuses(self, password: str) -> bool:
        """Whether the server refuses this login with `password` (a fresh driver connect)."""
        try:
            if self.pg:
                import asyncpg

                conn = await asyncpg.connect(self.url(password))
                await conn.close()
            else:
                import aiomysql

                conn = await aiomysql.connect(host=self.server.host, port=self.server.port,
                                              user=self.user, password=password, db="connman")
                conn.close()
        except Exception:  # any refusal will do
            return True
        return False


async def _checked_auth(login: Login) -> None:
    """Until the server checks this login's password (PostgreSQL reloads pg_hba.conf
    asynchronously), so that a test proves the credential rather than a trust rule."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not await login.refuses("not-the-password"):
        assert loop.time() < deadline, "the server does not check passwords"
        await asyncio.sleep(0.05)


_CREATED: dict[str, list[str]] = {}
"""The two logins made on each server (once per run), by server kind."""


async def _create_logins(driver: str, server: Server) -> list[str]:
    """Two logins checked by password: PostgreSQL roles (scram-sha-256 over loopback, added to
    the throwaway server's pg_hba.conf for these roles only) or MariaDB users."""
    users = [f"cm_rot_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    made = [Login(driver, server, u) for u in users]
    for login in made:
        await login.create()
    if isinstance(server, PostgresServer) and server.data_dir is not None:
        hba = server.data_dir / "pg_hba.conf"
        rules = "".join(f"host all {u} 127.0.0.1/32 scram-sha-256\n" for u in users)
        hba.write_text(rules + hba.read_text())
        await made[0].admin("SELECT pg_reload_conf()")
    return users


@pytest.fixture
async def logins(request: pytest.FixtureRequest, driver: str) -> AsyncIterator[list[Login]]:
    """This driver's server's two logins, each with a fresh password of its own."""
    kind = "postgres" if driver in PG_DRIVERS else "mysql"
    server = request.getfixturevalue(f"{kind}_server")
    if kind not in _CREATED:
        _CREATED[kind] = await _create_logins(driver, server)
    made = [Login(driver, server, u) for u in _CREATED[kind]]
    for login in made:
        await login.rotate()
        await _checked_auth(login)
    yield made
    for login in made:
        await login.terminate()


def _who(driver: str) -> str:
    return "SELECT current_user" if driver in PG_DRIVERS else (
        "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)")


def _app(manager: ConnectionManager, driver: str) -> FastAPI:
    app = FastAPI()

    @app.get("/who")
    async def who(db: Any = Depends(manager.session("main"))) -> dict[str, str]:
        return {"user": (await db.execute(text(_who(driver)))).scalar_one()}

    @app.get("/who-replica")
    async def who_replica(db: Any = Depends(manager.session("main", readonly=True))
                          ) -> dict[str, str]:
        return {"user": (await db.execute(text(_who(driver)))).scalar_one()}

    return app


async def _fast_who(manager: ConnectionManager, driver: str) -> str:
    async with manager.connection("main") as conn:
        if driver == "asyncpg":
            return str(await conn.fetchval("SELECT current_user"))
        if driver == "psycopg":
            cur = await conn.execute("SELECT current_user")
            return str((await cur.fetchone())[0])
        async with conn.cursor() as cur:  # the DBAPI-style drivers
            await cur.execute(_who(driver))
            return str((await cur.fetchone())[0])


def _client(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://app")


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_a_rotated_password_reaches_every_new_connection_on_every_path(
        driver: str, flavour: str, logins: list[Login],
        managers: list[ConnectionManager]) -> None:
    login = logins[0]
    calls: list[ConnectTarget] = []

    if flavour == "async":
        async def provider(target: ConnectTarget) -> SecretStr:
            await asyncio.sleep(0)  # awaited inside the driver's connect, on the loop
            calls.append(target)
            return SecretStr(login.password)
    else:
        def provider(target: ConnectTarget) -> str:  # type: ignore[misc]
            calls.append(target)
            return login.password

    m = ConnectionManager({"main": {
        "url": login.url(), "size": 2, "overflow": 2, "timeout": 10, "connect_timeout": 10,
        "credentials": provider, "replicas": [login.url()]}})
    managers.append(m)
    await m.open()
    stats = m.pool("main").stats
    # Warm-up: one call per connection, for the pool and its replica, each with its target.
    assert {t.pool for t in calls} == {"main", "main.replica1"}
    assert all(t.user == login.user and t.port == login.server.port for t in calls)
    assert len(calls) == stats()["connections_num"] + m.pool("main.replica1").stats()[
        "connections_num"] == 4

    async with _client(_app(m, driver)) as client:
        assert (await client.get("/who")).json() == {"user": login.user}
        old = await login.rotate()
        assert await login.refuses(old)
        # Connections opened before the rotation keep working, and nothing new is opened.
        before = len(calls)
        for path in ("/who", "/who-replica"):
            r = await client.get(path)
            assert r.status_code == 200, r.text
        assert await _fast_who(m, driver) == login.user
        assert len(calls) == before

        await login.terminate()
        # Every path now opens new connections, each with the current password.
        assert [(await client.get("/who")).status_code for _ in range(3)] == [200] * 3
        assert (await client.get("/who-replica")).json() == {"user": login.user}
        assert await _fast_who(m, driver) == login.user
        assert (await m.pool("main").probe(10))["status"] == "up"
        await login.rotate()
        await login.terminate()
        assert (await m.pool("main").probe(10))["status"] == "up"
        assert await _fast_who(m, driver) == login.user

    opened = stats()["connections_num"] + m.pool("main.replica1").stats()["connections_num"]
    assert len(calls) == opened  # once per new connection, no more
    assert stats()["connections_errors"] == 0


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_user_and_password_pair_switches_the_login(
        driver: str, logins: list[Login], managers: list[ConnectionManager]) -> None:
    """Vault's dynamic credentials rotate the user too: new connections log in as the new one."""
    current = {"login": logins[0]}

    def provider() -> tuple[str, str]:
        return current["login"].user, current["login"].password

    # The URL's own user is the default the provider overrides (and has no password here).
    m = ConnectionManager({"main": {"url": logins[1].url(), "size": 1, "overflow": 1,
                                    "timeout": 10, "connect_timeout": 10,
                                    "credentials": provider}})
    managers.append(m)
    await m.open()
    async with _client(_app(m, driver)) as client:
        assert (await client.get("/who")).json() == {"user": logins[0].user}
        current["login"] = logins[1]
        await logins[0].terminate()
        assert (await client.get("/who")).json() == {"user": logins[1].user}
        assert await _fast_who(m, driver) == logins[1].user


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_failing_provider_is_a_typed_503_that_names_the_pool_and_no_secret(
        driver: str, logins: list[Login], managers: list[ConnectionManager]) -> None:
    login = logins[0]
    state = {"fail": True}

    def provider() -> str:
        if state["fail"]:
            raise RuntimeError(f"vault said no to token {SECRET}")
        return login.password

    cfg = {"url": login.url(), "size": 1, "overflow": 1, "timeout": 10, "connect_timeout": 10,
           "credentials": provider}
    # At startup: PoolStartupError naming the pool; the provider's words are not in it.
    m = ConnectionManager({"main": cfg})
    with pytest.raises(PoolStartupError) as startup:
        await m.open()
    shown = "".join(traceback.format_exception(startup.value))
    assert "'main'" in str(startup.value)
    assert "credentials provider" in str(startup.value)
    assert SECRET not in shown
    assert login.password not in shown

    state["fail"] = False
    m = ConnectionManager({"main": cfg})
    managers.append(m)
    await m.open()
    state["fail"] = True
    await login.terminate()
    async with _client(_app(m, driver)) as client:
        r = await client.get("/who")
        assert r.status_code == 503
        assert r.headers["Retry-After"] == "10"
        assert SECRET not in r.text
        assert "credentials" in r.text
    with pytest.raises(ServerUnavailable) as in_service:
        await _fast_who(m, driver)
    err = in_service.value
    assert err.kind == "credentials"
    assert err.pool == "main"
    shown = "".join(traceback.format_exception(err))
    assert SECRET not in shown
    assert login.password not in shown
    assert (await m.pool("main").probe(10))["status"] == "down"

    state["fail"] = False  # the secrets store is back: the pool heals by itself
    assert await _fast_who(m, driver) == login.user
    assert m.pool("main").stats()["connections_errors"] >= 3


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_login_the_server_refuses_is_a_typed_503_of_the_drivers_class(
        driver: str, logins: list[Login], managers: list[ConnectionManager]) -> None:
    """The window of a rotation where the server has the new password and the app's source not
    yet: the refused login (SQLSTATE 28P01, MySQL 1045) is `ServerUnavailable(kind=
    "credentials")` (nothing ran: 503 + Retry-After), still SQLAlchemy's `OperationalError` on
    the session path, and the pool heals once the source has the new password."""
    login = logins[0]
    source = {"password": login.password}
    m = ConnectionManager({"main": {"url": login.url(), "size": 1, "overflow": 1, "timeout": 10,
                                    "connect_timeout": 10,
                                    "credentials": lambda: source["password"]}})
    managers.append(m)
    await m.open()
    await login.rotate()  # the server's password changes; the source still gives the old one
    await login.terminate()
    async with _client(_app(m, driver)) as client:
        r = await client.get("/who")
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == "10"
        assert login.password not in r.text
    with pytest.raises(ServerUnavailable) as caught:
        async with m.session("main") as db:
            await db.execute(text("SELECT 1"))
    # Still what the same login failure raises without connman (SQLAlchemy 2.1 wraps it in a
    # DBAPIError; 2.0.30 lets the driver's own error through at connect): the app's `except`
    # clause catches it either way.
    plain = create_async_engine(login.url(source["password"]), poolclass=NullPool)
    try:
        with pytest.raises(Exception) as without:  # noqa: PT011 - whatever SQLAlchemy raises
            async with plain.connect() as conn:
                await conn.execute(text("SELECT 1"))
    finally:
        await plain.dispose()
    assert isinstance(caught.value, type(without.value)), type(without.value)
    assert caught.value.kind == "credentials"
    assert caught.value.pool == "main"
    with pytest.raises(ServerUnavailable) as fast:
        await _fast_who(m, driver)
    assert fast.value.kind == "credentials"
    assert m.pool("main").stats()["requests_unavailable"] >= 2
    source["password"] = login.password  # the source caught up: no restart needed
    assert await _fast_who(m, driver) == login.user


@pytest.mark.parametrize("driver", DRIVERS)
async def test_reads_leave_a_replica_whose_provider_fails_for_the_primary(
        driver: str, logins: list[Login], managers: list[ConnectionManager]) -> None:
    login = logins[0]
    broken: set[str] = set()

    async def provider(target: ConnectTarget) -> str:
        if target.pool in broken:
            raise RuntimeError(SECRET)
        return login.password

    m = ConnectionManager({"main": {
        "url": login.url(), "size": 1, "overflow": 1, "timeout": 10, "connect_timeout": 10,
        "credentials": provider, "replicas": [login.url()]}})
    managers.append(m)
    await m.open()
    replica = m.pool("main.replica1")
    assert not replica.closed
    broken.add("main.replica1")
    await login.terminate()
    async with _client(_app(m, driver)) as client:
        r = await client.get("/who-replica")
        assert r.status_code == 200, r.text
        assert r.json() == {"user": login.user}
    assert replica.stats()["connections_errors"] >= 1


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_provider_returning_no_password_is_refused_by_type(
        driver: str, logins: list[Login], managers: list[ConnectionManager]) -> None:
    m = ConnectionManager({"main": {"url": logins[0].url(), "size": 1, "connect_timeout": 10,
                                    "credentials": lambda: {"password": SECRET}}})
    with pytest.raises(PoolStartupError) as info:
        await m.open()
    assert "returned a dict" in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("insert", [False, True], ids=["appended", "inserted"])
async def test_sqlalchemys_do_connect_recipe_sets_the_password(
        driver: str, insert: bool, logins: list[Login],
        managers: list[ConnectionManager]) -> None:
    """SQLAlchemy's documented recipe on `manager.native(name)`, registered after connman
    opened the engine, with or without `insert=True`: new connections take its password."""
    login = logins[0]
    m = ConnectionManager({"main": {"url": login.url(login.password), "size": 1, "overflow": 1,
                                    "timeout": 10, "connect_timeout": 10}})
    managers.append(m)
    await m.open()
    calls = []

    def fresh_password(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> None:
        calls.append(1)
        cparams["password"] = login.password

    event.listen(m.native("main").sync_engine, "do_connect", fresh_password, insert=insert)
    try:
        await login.rotate()
        await login.terminate()
        async with _client(_app(m, driver)) as client:
            assert (await client.get("/who")).json() == {"user": login.user}
        assert await _fast_who(m, driver) == login.user
        assert calls
        assert len(calls) == m.pool("main").stats()["connections_num"] - 1
    finally:
        event.remove(m.native("main").sync_engine, "do_connect", fresh_password)


async def dotted_provider() -> str:
    """A provider named by a dotted path (see the config test)."""
    return "from-a-dotted-path"


def test_the_field_takes_a_dotted_path_and_never_shows_what_it_binds() -> None:
    cfg = PoolConfig(url="postgresql+asyncpg://app@db/app",
                     credentials="tests.test_credentials:dotted_provider")
    assert cfg.credentials is dotted_provider
    bound = functools.partial(lambda token: token, SECRET)
    cfg = PoolConfig(url="mysql+asyncmy://app@db/app", credentials=bound)
    for shown in (repr(cfg), str(cfg.model_dump()), cfg.model_dump_json()):
        assert SECRET not in shown
    assert cfg.model_dump()["credentials"] == "functools.partial"
    assert PoolConfig(url="postgresql+asyncpg://app@db/app").credentials is None


@pytest.mark.parametrize(("fields", "says"), [
    ({"url": "mongodb://db/app", "credentials": "tests.test_credentials:dotted_provider"},
     "OIDC_CALLBACK"),
    ({"url": "sqlite+aiosqlite:///x.db", "credentials": lambda: "pw"}, "SQLite"),
    ({"url": "postgresql+asyncpg://db/app", "credentials": "pw-in-plain-text"},
     "not a dotted path"),
    ({"url": "postgresql+asyncpg://db/app", "credentials": 42}, "expected a callable"),
    ({"url": "postgresql+asyncpg://db/app", "credentials": "tests.test_credentials:SECRET"},
     "does not name a callable"),
])
def test_the_field_is_refused_where_it_cannot_work(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ConnectionManager({"main": fields})
    assert info.value.field == "credentials"
    assert says in str(info.value)
    assert SECRET not in str(info.value)


def vault_down() -> str:
    """A provider whose secrets store fails, quoting a secret (see the CLI test)."""
    raise RuntimeError(f"permission denied for token {SECRET}")


def trusted() -> str:
    """A provider for the throwaway server's trust-auth superuser (any password will do)."""
    return SECRET


@pytest.mark.postgres
def test_connman_check_shows_neither_the_provider_value_nor_its_message(
        postgres_server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from connman.cli import app as cli_app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONNMAN_POOLS__MAIN__URL", postgres_server.url(driver="asyncpg"))
    monkeypatch.setenv("CONNMAN_POOLS__MAIN__CONNECT_TIMEOUT", "5")
    monkeypatch.setenv("CONNMAN_POOLS__MAIN__CREDENTIALS", "tests.test_credentials:trusted")
    result = CliRunner().invoke(cli_app, ["check", "--json"])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    monkeypatch.setenv("CONNMAN_POOLS__MAIN__CREDENTIALS", "tests.test_credentials:vault_down")
    result = CliRunner().invoke(cli_app, ["check", "--json"])
    assert result.exit_code == 1
    error = json.loads(result.output)["pools"][0]["error"]
    assert "tests.test_credentials.vault_down raised RuntimeError" in error
    assert SECRET not in result.output


async def test_a_provider_that_hangs_fails_its_connect_within_connect_timeout() -> None:
    from connman._credentials import Credentials

    target = ConnectTarget(pool="main", host="db", port=5432, database="app", user="app")

    async def hangs() -> str:
        await asyncio.Event().wait()
        return "never"

    def times_out_itself() -> str:
        raise TimeoutError(SECRET)

    with pytest.raises(ServerUnavailable) as info:
        await Credentials("main", hangs, 0.2).fetch(target)
    assert "did not answer within connect_timeout=0.2s" in str(info.value)
    with pytest.raises(ServerUnavailable) as info:
        await Credentials("main", times_out_itself, 5).fetch(target)
    assert "raised TimeoutError" in str(info.value)
    assert SECRET not in "".join(traceback.format_exception(info.value))
    assert await Credentials("main", lambda t: (t.user, "pw"), 5).fetch(target) == ("app", "pw")


@pytest.mark.mongo
async def test_pymongos_own_oidc_callback_goes_through_options(mongo_server: Server) -> None:
    """What docs/semantics.md tells Mongo users to do instead of `credentials`: PyMongo's
    MONGODB-OIDC callback in `options` reaches PyMongo, which calls it for a token. (The test
    server has no OIDC, so the login itself is refused: the pool does not open.)"""
    from pymongo.auth_oidc import OIDCCallback, OIDCCallbackContext, OIDCCallbackResult

    asked: list[OIDCCallbackContext] = []

    class Workload(OIDCCallback):
        def fetch(self, context: OIDCCallbackContext) -> OIDCCallbackResult:
            asked.append(context)
            return OIDCCallbackResult(access_token=f"{SECRET}.jwt")

    m = ConnectionManager({"docs": {
        "url": mongo_server.url(database="app"), "size": 1, "connect_timeout": 5,
        "options": {"authMechanism": "MONGODB-OIDC",
                    "authMechanismProperties": {"OIDC_CALLBACK": Workload()}}}})
    with pytest.raises(PoolStartupError) as info:
        await m.open()
    assert asked
    assert SECRET not in str(info.value)
