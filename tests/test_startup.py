"""Apps as people write them: settings read at startup, not at import; pools from the app's own
settings object; honest errors when the lifespan did not run; one provider per pool name, which
`app.dependency_overrides` can replace. Every backend, real servers."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import uuid
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from pydantic import MongoDsn, PostgresDsn, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from connman import (
    ConfigurationError,
    ConnectionManager,
    PoolClosed,
    PoolConfig,
    PoolNotOpen,
    UnknownPool,
)

from ._targets import Ops, Target, serve


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No CONNMAN_* variables and no .env: an app imported by a test, a CLI or Alembic."""
    for key in list(os.environ):
        if key.startswith(("CONNMAN_", "MYAPP_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def env_for(target: Target, name: str = "MAIN") -> dict[str, str]:
    fields = {"URL": target.url(), "SIZE": "2", "CONNECT_TIMEOUT": "5"}
    if target.kind == "mongo":
        fields["DRIVER"] = target.driver
    return {f"CONNMAN_POOLS__{name}__{k}": v for k, v in fields.items()}


async def asgi_get(app: FastAPI, path: str) -> httpx.Response:
    """A request through httpx's ASGITransport, which does not run the app's lifespan."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://app") as client:
        return await client.get(path)


# -- settings read at open(), not at import -------------------------------------------------------


async def test_from_settings_without_pool_settings_reads_them_at_open(
        clean_env: pytest.MonkeyPatch, managers: list[ConnectionManager], target: Target) -> None:
    m = ConnectionManager.from_settings()  # no CONNMAN_POOLS__*: does not raise
    managers.append(m)
    provider = m.session("main")
    assert m.session("MAIN") is provider
    assert m.deferred
    assert m.names == ()
    assert repr(m) == "<ConnectionManager [pools read at open()]>"
    with pytest.raises(PoolNotOpen, match="pool 'main' is not open"):
        m.pool("main")
    # open() without the settings: the error names the variable the app needs.
    with pytest.raises(ConfigurationError, match="no pools configured: set "
                                                 "CONNMAN_POOLS__MAIN__URL") as info:
        await m.open()
    assert info.value.field == "pools"
    # The variable appears later (a test's fixture, the deployment's environment): open() reads it.
    for key, value in env_for(target).items():
        clean_env.setenv(key, value)
    ops = Ops(target)
    async with m:
        assert not m.deferred
        assert m.names == ("main",)
        async with m.session("main") as unit:
            await ops.create(unit)
            await ops.insert(unit, "a")
        async with provider as unit:  # the provider handed out before open() now works
            assert await ops.keys(unit) == {"a"}
        assert m.pool("main").config.size == 2
    assert m.pool("main").closed


async def test_open_checks_the_names_sessions_were_asked_for(
        clean_env: pytest.MonkeyPatch, managers: list[ConnectionManager], target: Target) -> None:
    m = ConnectionManager.from_settings()
    managers.append(m)
    m.session("main")
    m.session("reports", readonly=True)
    for key, value in env_for(target).items():
        clean_env.setenv(key, value)
    with pytest.raises(UnknownPool, match="no pool named 'reports', which the app uses; known "
                                          "pools: 'main'"):
        await m.open()
    assert m.deferred  # nothing was opened; a corrected environment can be read again
    assert m.stats() == {}


APP_MODULE = '''
from typing import Any

from fastapi import Depends, FastAPI

from connman import ConnectionManager

manager = ConnectionManager.from_settings()
app = FastAPI(lifespan=manager.lifespan)


@app.get("/ping")
async def ping(db: Any = Depends(manager.session("main"))) -> dict[str, bool]:
    return {"ok": True}
'''


async def test_an_app_module_imports_without_database_settings(
        clean_env: pytest.MonkeyPatch, tmp_path: Path, target: Target) -> None:
    module_name = f"connman_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module_name}.py").write_text(APP_MODULE)
    spec = importlib.util.spec_from_file_location(module_name, tmp_path / f"{module_name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # what a test, an Alembic env.py or a CLI does: no error
    sys.modules.pop(module_name, None)
    # Before its lifespan runs, a request is told why it cannot be served.
    r = await asgi_get(module.app, "/ping")
    assert r.status_code == 503
    assert "lifespan did not run" in r.json()["detail"]
    health = FastAPI()
    health.include_router(module.manager.health_router())
    r = await asgi_get(health, "/health")
    assert r.status_code == 503
    assert r.json()["status"] == "down"
    # Served for real, with the settings present at startup.
    for key, value in env_for(target).items():
        clean_env.setenv(key, value)
    async with serve(module.app) as base, httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/ping")).json() == {"ok": True}
    assert module.manager.pool("main").closed


# -- pools from the app's own settings object -----------------------------------------------------


class AppSettings(BaseSettings):
    """An app's settings: its database URL lives here, and only here."""

    model_config = SettingsConfigDict(env_prefix="MYAPP_", env_nested_delimiter="__")
    database_url: PostgresDsn | MongoDsn | str
    database_driver: str | None = None
    pool_size: int = 2
    api_key: SecretStr


class AppSettingsWithPool(BaseSettings):
    """An app's settings holding a whole connman pool config (`MYAPP_DB__URL`, `MYAPP_DB__SIZE`)."""

    model_config = SettingsConfigDict(env_prefix="MYAPP_", env_nested_delimiter="__")
    db: PoolConfig


async def test_pools_from_the_apps_own_settings_object(
        clean_env: pytest.MonkeyPatch, managers: list[ConnectionManager], target: Target) -> None:
    @cache
    def get_settings() -> AppSettings:
        return AppSettings()  # type: ignore[call-arg]  # read from the environment

    def pools() -> dict[str, Any]:
        s = get_settings()
        fields: dict[str, Any] = {"url": s.database_url, "size": s.pool_size}
        if s.database_driver:
            fields["driver"] = s.database_driver
        return {"main": fields}

    m = ConnectionManager(pools)  # nothing read yet
    managers.append(m)
    provider = m.session("main")
    # The app's settings are incomplete: open() says which field, and never quotes a value.
    clean_env.setenv("MYAPP_DATABASE_URL", target.url())
    with pytest.raises(ConfigurationError) as info:
        await m.open()
    assert str(info.value) == ("the pools could not be read: AppSettings: api_key: Field required")
    clean_env.setenv("MYAPP_API_KEY", "k")
    if target.kind == "mongo":
        clean_env.setenv("MYAPP_DATABASE_DRIVER", target.driver)
    ops = Ops(target)
    async with m, provider as unit:
        await ops.create(unit)
        await ops.insert(unit, "x")
    assert m.pool("main").config.url.get_secret_value().rstrip("/") == target.url().rstrip("/")

    # The same with a PoolConfig inside the app's settings.
    clean_env.setenv("MYAPP_DB__URL", target.url())
    clean_env.setenv("MYAPP_DB__SIZE", "1")
    if target.kind == "mongo":
        clean_env.setenv("MYAPP_DB__DRIVER", target.driver)
    m2 = ConnectionManager(lambda: {"main": AppSettingsWithPool().db})  # type: ignore[call-arg]
    managers.append(m2)
    async with m2, m2.session("main") as unit:
        assert await ops.keys(unit) == {"x"}
        assert m2.pool("main").config.size == 1


# -- honest errors when the lifespan did not run --------------------------------------------------


def build_app(m: ConnectionManager, ops: Ops) -> FastAPI:
    app = FastAPI(lifespan=m.lifespan)

    @app.get("/keys")
    async def keys(unit: Any = Depends(m.session("main"))) -> list[str]:
        return sorted(await ops.keys(unit))

    return app


async def test_a_pool_never_opened_says_why(managers: list[ConnectionManager],
                                            target: Target) -> None:
    m = ConnectionManager({"main": target.config()})
    managers.append(m)
    with pytest.raises(PoolNotOpen) as info:
        async with m.session("main"):
            pass
    assert isinstance(info.value, PoolClosed)  # existing `except PoolClosed` still catch it
    assert info.value.pool == "main"
    message = str(info.value)
    assert message.startswith("pool 'main' is not open: the app's lifespan did not run")
    assert "ASGITransport" in message
    assert "shutting down" not in message
    # Through FastAPI, with the transport that does not run the lifespan.
    r = await asgi_get(build_app(m, Ops(target)), "/keys")
    assert r.status_code == 503
    assert r.json()["detail"] == f"database {message}"
    assert "retry-after" not in r.headers
    assert m.stats("main")["requests_errors"] == 2


async def test_shutting_down_is_said_only_of_a_pool_that_is(
        managers: list[ConnectionManager], target: Target) -> None:
    ops = Ops(target)
    m = ConnectionManager({"main": target.config(drain_timeout=10.0)})
    managers.append(m)
    app = build_app(m, ops)
    await m.open()
    async with m.session("main") as unit:
        await ops.create(unit)
    release = asyncio.Event()

    async def hold() -> None:
        async with m.session("main"):
            await release.wait()

    holder = asyncio.create_task(hold())
    while m.stats("main")["requests_active"] == 0:
        await asyncio.sleep(0.01)
    closing = asyncio.create_task(m.close())  # drains: waits for the held session
    while not m.pool("main").closed:
        await asyncio.sleep(0.01)
    r = await asgi_get(app, "/keys")
    assert r.status_code == 503
    assert r.json()["detail"] == "database pool 'main' is shutting down"
    assert r.headers["retry-after"] == "1"
    with pytest.raises(PoolClosed, match="pool 'main' is closing: the app is shutting down") as info:
        async with m.session("main"):
            pass
    assert not isinstance(info.value, PoolNotOpen)
    release.set()
    await asyncio.gather(holder, closing)
    with pytest.raises(PoolClosed, match="pool 'main' is closed: the app is shutting down") as info:
        async with m.session("main"):
            pass
    assert not isinstance(info.value, PoolNotOpen)


# -- one provider per name; dependency overrides ---------------------------------------------------


async def test_dependency_override_replaces_the_provider_everywhere(
        managers: list[ConnectionManager], target: Target) -> None:
    """The docs/testing.md recipe: the app's manager is never opened; a test manager serves."""
    app_manager = ConnectionManager({"main": target.config()})
    test_manager = ConnectionManager({"main": target.config()})
    managers += [app_manager, test_manager]
    assert app_manager.session("main") is app_manager.session("MAIN")
    assert app_manager.session("main") is not app_manager.session("main", readonly=True)
    ops = Ops(target)
    app = FastAPI(lifespan=app_manager.lifespan)

    @app.get("/keys")
    async def keys(unit: Any = Depends(app_manager.session("main"))) -> list[str]:
        return sorted(await ops.keys(unit))

    @app.get("/upper")
    async def upper(unit: Any = Depends(app_manager.session("MAIN"))) -> list[str]:
        return sorted(await ops.keys(unit))

    @app.get("/read")
    async def read(unit: Any = Depends(app_manager.session("main", readonly=True))) -> list[str]:
        return sorted(await ops.keys(unit))

    app.dependency_overrides[app_manager.session("main")] = test_manager.session("main")
    async with test_manager:
        async with test_manager.session("main") as unit:
            await ops.create(unit)
            await ops.insert(unit, "t")
        assert (await asgi_get(app, "/keys")).json() == ["t"]
        assert (await asgi_get(app, "/upper")).json() == ["t"]
        # An override of the plain provider does not cover readonly=True: that is its own object.
        r = await asgi_get(app, "/read")
        assert r.status_code == 503
        assert "lifespan did not run" in r.json()["detail"]
        app.dependency_overrides[app_manager.session("main", readonly=True)] = (
            test_manager.session("main", readonly=True))
        assert (await asgi_get(app, "/read")).json() == ["t"]
        assert test_manager.stats("main")["requests_num"] == 4
        assert test_manager.stats("main")["requests_active"] == 0
    assert app_manager.stats("main")["requests_num"] == 0

