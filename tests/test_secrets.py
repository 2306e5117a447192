"""A password never shows: repr/str, DEBUG logs, errors, metrics, health, `connman check --json`.

Every URL form is covered (user:pass, percent-encoded, query-string password, mongodb+srv). The
live tests authenticate for real: a throwaway PostgreSQL role per form with a password, which a
`pg_hba.conf` line (scram-sha-256, for those roles only, removed afterwards) makes the server check,
and a SecantusDB user. Each test gathers everything it can see (reprs, caplog at DEBUG for
'connman', 'sqlalchemy' and 'pymongo', stdout/stderr, error messages and tracebacks, metrics text,
health JSON, CLI output) and scans it all for each secret, raw and percent-decoded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import traceback
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from connman import ConnectionManager, PoolConfig, PoolStartupError, PoolTimeout, SecretURL, mask_url
from connman.cli import app as cli_app
from connman.testing.proxy import TcpProxy
from connman.testing.servers import PostgresServer, Server, free_port

PW_PLAIN = "Pl41n-Secr3t-7xq"
PW_DECODED = "p@ss/w0rd!Zq9:%x"  # needs percent-encoding in a URL
PW_ENCODED = quote(PW_DECODED, safe="")
PW_QUERY = "Qs-Secr3t-4kz"
PW_SRV = "Srv-Secr3t-8mv"
PW_MONGO = "M0ngo-Secr3t-2wy"
PW_WRONG = "Wr0ng-Secr3t-5jn"
SECRETS = [PW_PLAIN, PW_DECODED, PW_ENCODED, PW_QUERY, PW_SRV, PW_MONGO, PW_WRONG,
           quote(PW_PLAIN, safe=""), quote(PW_QUERY, safe="")]

STATIC_URLS = {
    "user:pass": f"postgresql+asyncpg://app:{PW_PLAIN}@db.internal:5432/app",
    "percent-encoded": f"mysql+aiomysql://app:{PW_ENCODED}@db.internal:3306/app",
    "query-string": f"postgresql+asyncpg://app@db.internal/app?password={PW_QUERY}&sslmode=prefer",
    "mongodb+srv": f"mongodb+srv://app:{PW_SRV}@cluster0.example.net/app?retryWrites=true",
    "mongodb": f"mongodb://app:{PW_MONGO}@m1:27017,m2:27017/app?replicaSet=rs0&authSource=admin",
}
LOGGERS = ("connman", "sqlalchemy", "pymongo")


class Seen:
    """Everything a test saw, by where it came from."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, *items: Any) -> None:
        for item in items:
            text = item if isinstance(item, str) else repr(item)
            self.texts.append((where, text))
            if not isinstance(item, str):
                self.texts.append((where, str(item)))

    def error(self, where: str, exc: BaseException) -> None:
        self.add(where, str(exc), repr(exc), "".join(traceback.format_exception(exc)))

    def logs(self, caplog: pytest.LogCaptureFixture) -> None:
        self.add("caplog", caplog.text)
        for r in caplog.records:
            self.add(f"log {r.name}", r.getMessage(), repr(r.args), r.exc_text or "")
            if r.exc_info and r.exc_info[1] is not None:
                self.error(f"log {r.name} exc_info", r.exc_info[1])

    def output(self, capsys: pytest.CaptureFixture[str]) -> None:
        out, err = capsys.readouterr()
        self.add("stdout", out)
        self.add("stderr", err)

    def leaks(self) -> list[str]:
        return [f"{secret!r} in {where}: ...{text[max(0, text.find(secret) - 60):][:160]}..."
                for where, text in self.texts for secret in SECRETS if secret in text]

    def assert_clean(self) -> None:
        assert self.texts
        assert not self.leaks(), "\n".join(self.leaks())


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def loggers_seen(caplog: pytest.LogCaptureFixture) -> set[str]:
    return {r.name.split(".")[0] for r in caplog.records}


# -- repr and str ---------------------------------------------------------------------------------


@pytest.mark.parametrize("url", list(STATIC_URLS.values()), ids=list(STATIC_URLS))
def test_repr_and_str_never_show_the_password(url: str) -> None:
    seen = Seen()
    secret_url = SecretURL(url)
    config = PoolConfig(url=url)
    seen.add("SecretURL", secret_url, f"{secret_url}", f"{secret_url!r}", secret_url.masked)
    seen.add("PoolConfig", config, config.model_dump(), config.model_dump_json(), dict(config))
    manager = ConnectionManager({"main": url, "other": {"url": url, "size": 1}})
    pool = manager.pool("main")
    seen.add("manager", manager, manager.stats(), manager.session("main"))
    seen.add("pool", pool, pool.state(), pool.driver_options(), pool.config)
    assert manager.pool("main").config.url.get_secret_value() == url  # the driver still gets it
    seen.assert_clean()


def test_settings_repr_never_shows_the_password(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    from connman import load_settings

    monkeypatch.chdir(tmp_path)
    for form, url in STATIC_URLS.items():
        monkeypatch.setenv(f"CONNMAN_POOLS__{form.replace(':', '').replace('+', '').replace('-', '')}"
                           "__URL", url)
    settings = load_settings(env_file=None)
    seen = Seen()
    seen.add("ConnmanSettings", settings, settings.model_dump_json())
    seen.add("manager", ConnectionManager.from_settings(settings))
    seen.assert_clean()


# -- errors at startup ----------------------------------------------------------------------------


@pytest.mark.parametrize("url", list(STATIC_URLS.values()), ids=list(STATIC_URLS))
async def test_startup_failure_never_shows_the_password(
        url: str, debug_logs: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens there
    dead = (url.replace("db.internal:5432", f"127.0.0.1:{port}")
            .replace("db.internal:3306", f"127.0.0.1:{port}")
            .replace("db.internal/", f"127.0.0.1:{port}/")
            .replace("m1:27017,m2:27017", f"127.0.0.1:{port}")
            .replace("replicaSet=rs0&", "directConnection=true&"))
    seen = Seen()
    manager = ConnectionManager({"main": {"url": dead, "connect_timeout": 1.0, "size": 1}})
    with pytest.raises(PoolStartupError, match="pool 'main'") as info:
        await manager.open()
    seen.error("PoolStartupError", info.value)
    seen.logs(debug_logs)
    seen.output(capsys)
    seen.assert_clean()


# -- live, authenticated connections --------------------------------------------------------------


@contextlib.asynccontextmanager
async def pg_roles(server: Server) -> AsyncIterator[dict[str, str]]:
    """Three throwaway roles with passwords; scram-sha-256 required for them while they exist."""
    import asyncpg

    tag = uuid.uuid4().hex[:6]
    roles = {"user:pass": (f"cmsec_plain_{tag}", PW_PLAIN),
             "percent-encoded": (f"cmsec_enc_{tag}", PW_DECODED),
             "query-string": (f"cmsec_qs_{tag}", PW_QUERY)}
    hba = (server.data_dir / "pg_hba.conf"
           if isinstance(server, PostgresServer) and server.data_dir is not None else None)
    original = hba.read_text() if hba is not None else None
    admin = await asyncpg.connect(server.url())
    try:
        for role, password in roles.values():
            await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD "
                                f"'{password.replace(chr(39), chr(39) * 2)}'")
        if hba is not None and original is not None:
            lines = "".join(f"host all {role} 127.0.0.1/32 scram-sha-256\n"
                            for role, _ in roles.values())
            hba.write_text(lines + original)
            await admin.execute("SELECT pg_reload_conf()")
        host = f"127.0.0.1:{server.port}"
        (plain, _), (enc, _), (qs, _) = roles.values()
        yield {"user:pass": f"postgresql+asyncpg://{plain}:{PW_PLAIN}@{host}/postgres",
               "percent-encoded": f"postgresql+asyncpg://{enc}:{PW_ENCODED}@{host}/postgres",
               "query-string": f"postgresql+asyncpg://{qs}@{host}/postgres?password={PW_QUERY}",
               "wrong": f"postgresql+asyncpg://{plain}:{PW_WRONG}@{host}/postgres",
               "no-password": f"postgresql+asyncpg://{plain}@{host}/postgres",
               "checked": "yes" if hba is not None else ""}
    finally:
        if hba is not None and original is not None:
            hba.write_text(original)
            await admin.execute("SELECT pg_reload_conf()")
        for role, _ in roles.values():
            await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


@contextlib.asynccontextmanager
async def mongo_user(server: Server) -> AsyncIterator[str]:
    from pymongo import AsyncMongoClient

    db = f"cmsec_{uuid.uuid4().hex[:6]}"
    client: Any = AsyncMongoClient(server.url())
    try:
        await client[db].command("createUser", "cmsec", pwd=PW_MONGO,
                                 roles=[{"role": "readWrite", "db": db}])
        yield (f"mongodb://cmsec:{PW_MONGO}@127.0.0.1:{server.port}/{db}?directConnection=true"
               f"&authSource={db}&serverMonitoringMode=poll&heartbeatFrequencyMS=500")
    finally:
        with contextlib.suppress(Exception):
            await client[db].command("dropUser", "cmsec")
            await client.drop_database(db)
        await client.close()


async def exercise(url: str, seen: Seen, *, driver: str | None = None) -> None:
    """Open a pool on `url`, use it, exhaust it, read health and metrics, break its network."""
    from sqlalchemy import text

    fields: dict[str, Any] = {"url": url, "size": 1, "overflow": 0, "timeout": 0.2,
                              "connect_timeout": 2.0, "echo": True}
    if driver:
        fields["driver"] = driver
    manager = ConnectionManager({"main": fields})
    seen.add("manager", manager, manager.pool("main").driver_options())
    async with manager:
        async with manager.session("main") as unit:
            if manager.pool("main").backend == "sqlalchemy":
                assert (await unit.execute(text("SELECT current_user"))).scalar()
            else:
                await unit.probe.insert_one({"x": 1})
            with pytest.raises(PoolTimeout) as info:
                async with manager.session("main"):
                    pass
            seen.error("PoolTimeout", info.value)
        seen.add("manager (open)", manager, manager.stats())
        health = await get_health(manager)
        assert health.status_code == 200, health.text
        seen.add("health", health.text)
        with contextlib.suppress(ImportError):
            from prometheus_client import CollectorRegistry, generate_latest

            from connman.metrics.prometheus import register

            registry = CollectorRegistry()
            register(manager, registry)
            metrics = generate_latest(registry).decode()
            assert "connman_" in metrics
            seen.add("metrics", metrics)


async def get_health(manager: ConnectionManager) -> httpx.Response:
    """GET /health from the manager's health router, in process."""
    app = FastAPI()
    app.include_router(manager.health_router(detail=True))  # the level that shows the most
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://app") as client:
        return await client.get("/health")


async def health_when_down(url: str, server: Server, seen: Seen, *,
                           driver: str | None = None) -> None:
    """The health router's answer once the network to the database is cut."""
    with TcpProxy(server.host, server.port) as proxy:
        via = url.replace(f"127.0.0.1:{server.port}", f"127.0.0.1:{proxy.port}")
        fields: dict[str, Any] = {"url": via, "size": 1, "connect_timeout": 1.0}
        if driver:
            fields["driver"] = driver
        manager = ConnectionManager({"main": fields})
        async with manager:
            proxy.cut()
            health = await get_health(manager)
            assert health.status_code == 503, health.text
            seen.add("health (down)", health.text)
            proxy.restore()


@pytest.mark.postgres
@pytest.mark.parametrize("form", ["user:pass", "percent-encoded", "query-string"])
async def test_live_postgres_pool_never_shows_the_password(
        form: str, postgres_server: Server, debug_logs: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    seen = Seen()
    async with pg_roles(postgres_server) as urls:
        await exercise(urls[form], seen)
        await health_when_down(urls[form], postgres_server, seen)
        assert "sqlalchemy" in loggers_seen(debug_logs)
        if urls["checked"]:  # the server really checks the password: a wrong one is refused
            for bad in ("wrong", "no-password"):
                manager = ConnectionManager({"main": {"url": urls[bad], "size": 1}})
                with pytest.raises(PoolStartupError, match="pool 'main'") as info:
                    await manager.open()
                seen.error(f"PoolStartupError ({bad})", info.value)
    seen.logs(debug_logs)
    seen.output(capsys)
    seen.assert_clean()


@pytest.mark.mongo
@pytest.mark.parametrize("driver", ["pymongo", "motor"])
async def test_live_mongo_pool_never_shows_the_password(
        driver: str, mongo_server: Server, debug_logs: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    seen = Seen()
    async with mongo_user(mongo_server) as url:
        await exercise(url, seen, driver=driver)
        await health_when_down(url, mongo_server, seen, driver=driver)
        wrong = url.replace(PW_MONGO, PW_WRONG)
        manager = ConnectionManager({"main": {"url": wrong, "size": 1, "driver": driver}})
        with pytest.raises(PoolStartupError, match="pool 'main'") as info:
            await manager.open()
        seen.error("PoolStartupError (wrong password)", info.value)
    assert "pymongo" in loggers_seen(debug_logs)
    seen.logs(debug_logs)
    seen.output(capsys)
    seen.assert_clean()


# -- connman check --json -------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.mongo
async def test_connman_check_never_shows_the_password(
        postgres_server: Server, mongo_server: Server, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    import asyncio

    monkeypatch.chdir(tmp_path)
    async with pg_roles(postgres_server) as urls, mongo_user(mongo_server) as mongo_url:
        pools = {"plain": urls["user:pass"], "enc": urls["percent-encoded"],
                 "qs": urls["query-string"], "docs": mongo_url,
                 "dead": f"postgresql+asyncpg://u:{PW_WRONG}@127.0.0.1:{free_port()}/db",
                 "srv": STATIC_URLS["mongodb+srv"]}
        for name, url in pools.items():
            monkeypatch.setenv(f"CONNMAN_POOLS__{name.upper()}__URL", url)
            monkeypatch.setenv(f"CONNMAN_POOLS__{name.upper()}__CONNECT_TIMEOUT", "2")
        runner = CliRunner()
        args = ["check", "--env-file", str(tmp_path / "none.env")]
        # The CLI runs its own event loop (asyncio.run): give it a thread of its own.
        as_json = await asyncio.to_thread(runner.invoke, cli_app, [*args, "--json"])
        human = await asyncio.to_thread(runner.invoke, cli_app, args)
    report = json.loads(as_json.output)
    status = {p["pool"]: p["status"] for p in report["pools"]}
    assert status == {"plain": "ok", "enc": "ok", "qs": "ok", "docs": "ok", "dead": "error",
                      "srv": "error"}, report["problems"]
    assert as_json.exit_code == human.exit_code == 1
    seen = Seen()
    seen.add("check --json", as_json.output)
    seen.add("check", human.output)
    for result in (as_json, human):
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            seen.error("check exception", result.exception)
    seen.assert_clean()


# -- structural masking: a password equal to another part of the URL ------------------------------


def test_a_password_equal_to_user_and_database_is_masked_in_its_place_only() -> None:
    url = "postgresql+asyncpg://postgres:postgres@db.internal:5432/postgres"
    masked = "postgresql+asyncpg://postgres:***@db.internal:5432/postgres"
    assert mask_url(url) == masked
    config = PoolConfig(url=url)
    assert str(config.url) == masked
    assert masked in repr(config)
    manager = ConnectionManager({"main": url})
    assert masked in repr(manager)
    assert "***ql" not in repr(manager)


@pytest.mark.parametrize(("password", "text", "expected"), [
    # the password is also the user and the database: the URL keeps its shape, the scheme its name
    ("postgres", 'password authentication failed for user "postgres" at '
                 "postgresql+asyncpg://postgres:postgres@h:5432/postgres (postgresql)",
     'password authentication failed for user "***" at '
     "postgresql+asyncpg://postgres:***@h:5432/postgres (postgresql)"),
    # the password is a common word: hidden where it stands alone, not inside other words
    ("test", "database testdb: test failed; attest; password=test",
     "database testdb: *** failed; attest; password=***"),
    # the password is the host
    ("db", "could not connect to db (mysql+aiomysql://app:db@db:3306/app)",
     "could not connect to *** (mysql+aiomysql://app:***@db:3306/app)"),
    # URLs other than the pool's are masked too; one with nothing secret is left as written
    ("x9Secr3t", "tried mongodb://u:x9Secr3t@m1,m2/app?replicaSet=rs&authSource=admin, see "
                 "https://sqlalche.me/e/20/e3q8.",
     "tried mongodb://u:***@m1,m2/app?replicaSet=rs&authSource=admin, see "
     "https://sqlalche.me/e/20/e3q8."),
    # a password that no URL parser can split still goes: the pool's own URL is masked whole
    ("p w'd)", "connect(postgresql+asyncpg://app:p w'd)@h/app) failed: p w'd)",
     "connect(postgresql+asyncpg://app:***@h/app) failed: ***"),
])
def test_redaction_masks_urls_structurally_then_hides_the_password(
        password: str, text: str, expected: str) -> None:
    from connman._url import redact, secrets_of

    urls = [u for u in (
        f"postgresql+asyncpg://postgres:{password}@h:5432/postgres",
        f"mysql+aiomysql://app:{password}@db:3306/app",
        f"postgresql+asyncpg://app:{password}@h/app") if u in text]
    secrets = sorted({s for u in urls for s in secrets_of(u)} | {password}, key=len, reverse=True)
    assert redact(text, secrets, urls) == expected


@contextlib.asynccontextmanager
async def pg_login(server: Server, logins: dict[str, str]) -> AsyncIterator[bool]:
    """Roles with these passwords; yields whether the server checks them (scram-sha-256).

    It does on the suite's throwaway server, whose pg_hba.conf this edits while the roles exist;
    a running server given by CONNMAN_TEST_POSTGRES_URL may trust any password.
    """
    import asyncpg

    hba = (server.data_dir / "pg_hba.conf"
           if isinstance(server, PostgresServer) and server.data_dir is not None else None)
    original = hba.read_text() if hba is not None else None
    admin = await asyncpg.connect(server.url())
    try:
        for role, password in logins.items():
            await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD "
                                f"'{password.replace(chr(39), chr(39) * 2)}'")
        if hba is not None and original is not None:
            hba.write_text("".join(f"host all {role} 127.0.0.1/32 scram-sha-256\n"
                                   for role in logins) + original)
            await admin.execute("SELECT pg_reload_conf()")
        yield hba is not None
    finally:
        if hba is not None and original is not None:
            hba.write_text(original)
            await admin.execute("SELECT pg_reload_conf()")
        for role in logins:
            await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


# How the password relates to the URL it sits in (the user is `user`).
SAME_AS = {
    "user": lambda user: user,
    "database": lambda user: "postgres",
    "host": lambda user: "127.0.0.1",
    "common word": lambda user: "connection",
}


@pytest.mark.postgres
@pytest.mark.parametrize("same_as", list(SAME_AS))
async def test_live_password_equal_to_another_part_keeps_the_url_readable(
        same_as: str, postgres_server: Server, debug_logs: pytest.LogCaptureFixture) -> None:
    tag = uuid.uuid4().hex[:6]
    good, bad = f"cmeq_good_{tag}", f"cmeq_bad_{tag}"
    good_pw, bad_pw = SAME_AS[same_as](good), SAME_AS[same_as](bad)
    host = f"127.0.0.1:{postgres_server.port}"
    async with pg_login(postgres_server, {good: good_pw, bad: PW_PLAIN}) as checked:
        # The right password: the pool works; every place shows the URL with *** in its place.
        url = f"postgresql+asyncpg://{good}:{good_pw}@{host}/postgres"
        masked = f"postgresql+asyncpg://{good}:***@{host}/postgres"
        manager = ConnectionManager({"main": {"url": url, "size": 1, "connect_timeout": 5.0}})
        async with manager:
            async with manager.session("main") as db:
                from sqlalchemy import text

                assert (await db.execute(text("SELECT current_user"))).scalar() == good
            health = (await get_health(manager)).json()
            assert health["pools"]["main"]["url"] == masked
            assert masked in repr(manager)
        # A wrong password that equals the user, the database, the host or a common word: the
        # error shows the URL whole and masked, and the password nowhere else.
        url = f"postgresql+asyncpg://{bad}:{bad_pw}@{host}/postgres"
        masked = f"postgresql+asyncpg://{bad}:***@{host}/postgres"
        if not checked:  # a server that trusts any password cannot refuse this one
            return
        manager = ConnectionManager({"main": {"url": url, "size": 1, "connect_timeout": 5.0}})
        with pytest.raises(PoolStartupError) as info:
            await manager.open()
    message = str(info.value)
    prefix = f"pool 'main' ({masked}) could not be opened: "
    assert message.startswith(prefix), message
    driver_words = message[len(prefix):]
    assert "InvalidPasswordError" in driver_words or "password" in driver_words, message
    import re

    assert not re.search(rf"(?<![\w.]){re.escape(bad_pw)}(?![\w.])", driver_words), message
    for text_seen in (debug_logs.text, repr(info.value)):
        assert f"{bad}:{bad_pw}@" not in text_seen
        assert f"{good}:{good_pw}@" not in text_seen


# -- URL objects and masked strings ---------------------------------------------------------------


def url_forms(url: str) -> dict[str, Any]:
    """The same URL as a string, a SQLAlchemy URL, a pydantic DSN and a pydantic SecretStr."""
    from pydantic import MongoDsn, PostgresDsn, SecretStr, TypeAdapter
    from sqlalchemy.engine import make_url

    dsn = MongoDsn if url.startswith("mongodb") else PostgresDsn
    return {"str": url, "sqlalchemy.URL": make_url(url),
            "pydantic DSN": TypeAdapter(dsn).validate_python(url), "SecretStr": SecretStr(url)}


@pytest.mark.parametrize("form", ["sqlalchemy.URL", "pydantic DSN", "SecretStr"])
def test_url_objects_are_accepted_and_never_shown(form: str) -> None:
    url = STATIC_URLS["user:pass"]
    value = url_forms(url)[form]
    config = PoolConfig(url=value, replicas=[value])
    assert config.url.get_secret_value() == url
    assert config.replicas[0].get_secret_value() == url
    seen = Seen()
    manager = ConnectionManager({"main": {"url": value, "replicas": [value]}})
    seen.add("config", config, config.model_dump(), config.model_dump_json())
    seen.add("manager", manager, manager.pool("main").state())
    from connman import ConnmanSettings

    seen.add("settings", ConnmanSettings(pools={"main": {"url": value}}))
    seen.assert_clean()


def test_a_masked_url_is_refused_with_the_reason() -> None:
    from sqlalchemy.engine import make_url

    from connman import ConfigurationError

    url = make_url(STATIC_URLS["user:pass"])
    assert ":***@" in str(url)  # what the obvious workaround, str(url), gives
    for masked in (str(url), mask_url(STATIC_URLS["query-string"]),
                   STATIC_URLS["user:pass"].replace(PW_PLAIN, "%2A%2A%2A")):
        with pytest.raises(ConfigurationError) as info:
            ConnectionManager({"main": masked})
        assert info.value.field == "url"
        assert str(info.value).startswith("pool 'main': url: the password is '***', a mask")
        assert "render_as_string(hide_password=False)" in str(info.value)
    with pytest.raises(ConfigurationError, match=r"pool 'main': replicas\.0: the password is"):
        ConnectionManager({"main": {"url": STATIC_URLS["user:pass"], "replicas": [str(url)]}})
    with pytest.raises(ConfigurationError, match=r"pool 'main': url: must be a URL: a string, a "
                                                 r"sqlalchemy\.engine\.URL or a pydantic URL type"):
        ConnectionManager({"main": {"url": 5432}})


@pytest.mark.postgres
@pytest.mark.parametrize("form", ["sqlalchemy.URL", "pydantic DSN", "SecretStr"])
async def test_live_postgres_from_a_url_object(form: str, postgres_server: Server,
                                               debug_logs: pytest.LogCaptureFixture) -> None:
    from sqlalchemy import text

    role = f"cmobj_{uuid.uuid4().hex[:6]}"
    url = f"postgresql+asyncpg://{role}:{PW_ENCODED}@127.0.0.1:{postgres_server.port}/postgres"
    async with pg_login(postgres_server, {role: PW_DECODED}):
        manager = ConnectionManager({"main": {"url": url_forms(url)[form], "size": 1}})
        async with manager, manager.session("main") as db:
            assert (await db.execute(text("SELECT current_user"))).scalar() == role
        # The masked string is refused before anything is sent to the server.
        from sqlalchemy.engine import make_url

        from connman import ConfigurationError

        with pytest.raises(ConfigurationError, match="the password is '\\*\\*\\*'"):
            ConnectionManager({"main": {"url": str(make_url(url)), "size": 1}})
    seen = Seen()
    seen.logs(debug_logs)
    seen.add("manager", manager)
    seen.assert_clean()


@pytest.mark.mongo
async def test_live_mongo_from_a_pydantic_dsn(mongo_server: Server) -> None:
    async with mongo_user(mongo_server) as url:
        for form in ("pydantic DSN", "SecretStr"):
            manager = ConnectionManager({"main": {"url": url_forms(url)[form], "size": 1}})
            async with manager, manager.session("main") as db:
                await db.probe.insert_one({"x": 1})
                assert await db.probe.count_documents({}) >= 1
            seen = Seen()
            seen.add("manager", manager)
            seen.assert_clean()
