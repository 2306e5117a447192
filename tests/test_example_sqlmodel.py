"""examples/sqlmodel_app.py over real HTTP on every SQL backend: SQLModel sessions from connman."""

from __future__ import annotations

import uuid

import httpx
import pytest

from connman import ConfigurationError
from examples import sqlmodel_app
from examples.sqlmodel_app import Settings, create_app

from ._targets import Target, serve
from .conftest import only


@only(kinds=("sql",))
async def test_heroes_crud(target: Target) -> None:
    app = create_app(lambda: Settings(database_url=target.url(), pool_size=2))
    name = f"Deadpond-{uuid.uuid4().hex[:6]}"
    async with serve(app) as base, httpx.AsyncClient(base_url=base) as client:
        r = await client.post("/heroes/", json={"name": name, "secret_name": "Dive Wilson"})
        assert r.status_code == 200, r.text
        hero = r.json()
        assert hero["name"] == name
        assert isinstance(hero["id"], int)
        # Committed before the response: the next request (another session) reads it.
        assert (await client.get(f"/heroes/{hero['id']}")).json() == hero
        r = await client.post("/heroes/", json={"name": "Rusty-Man", "secret_name": "Tommy Sharp",
                                                "age": 48})
        listed = (await client.get("/heroes/", params={"limit": 100})).json()
        assert hero in listed
        assert r.json() in listed
        r = await client.post("/heroes/", json={"name": "x" * 101, "secret_name": "too long"})
        assert r.status_code == 422
        assert (await client.delete(f"/heroes/{hero['id']}")).json() == {"ok": True}
        assert (await client.get(f"/heroes/{hero['id']}")).status_code == 404
        health = (await client.get("/health")).json()
        assert health == {"status": "up", "pools": {"main": {"status": "up"}}}  # public level
        manager = app.state.manager
        assert manager.stats("main")["requests_active"] == 0
        assert manager.pool("main").config.session_class.__module__ == (
            "sqlmodel.ext.asyncio.session")
    assert manager.pool("main").closed


async def test_the_module_imports_without_settings_and_startup_names_what_is_missing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.delenv("HEROES_DATABASE_URL", raising=False)
    monkeypatch.chdir(str(tmp_path))
    sqlmodel_app.get_settings.cache_clear()
    manager = sqlmodel_app.app.state.manager  # built at import, with no database settings
    assert manager.deferred
    with pytest.raises(ConfigurationError, match="Settings: database_url: Field required"):
        await manager.open()
