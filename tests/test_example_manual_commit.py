"""examples/manual_commit_app.py over real HTTP on every SQL backend: views that commit themselves.

`test_uncommitted_work_is_rolled_back` needs `commit="manual"` in `SQLAlchemyPool._end`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from connman import ConnectionManager
from examples.manual_commit_app import Settings, create_app

from ._targets import Target, serve
from .conftest import only

_managers: dict[int, ConnectionManager] = {}


@pytest.fixture
async def client(target: Target) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the example app, served by uvicorn with its lifespan."""
    app = create_app(lambda: Settings(database_url=target.url()))
    async with serve(app) as base, httpx.AsyncClient(base_url=base) as client:
        _managers[id(client)] = app.state.manager
        yield client
        del _managers[id(client)]
    assert app.state.manager.pool("main").closed


async def open_account(client: httpx.AsyncClient, owner: str, deposit: int) -> int:
    r = await client.post("/accounts", params={"owner": owner, "deposit": deposit})
    assert r.status_code == 200, r.text
    return int(r.json()["id"])


async def balance(client: httpx.AsyncClient, account_id: int) -> int:
    return int((await client.get(f"/accounts/{account_id}")).json()["balance"])


def assert_connections_returned(client: httpx.AsyncClient) -> None:
    stats = _managers[id(client)].stats("main")
    assert stats["requests_active"] == 0
    assert stats["pool_available"] == stats["pool_size"]


@only(kinds=("sql",))
async def test_what_a_view_commits_is_kept(client: httpx.AsyncClient) -> None:
    alice, bob = await open_account(client, "alice", 100), await open_account(client, "bob", 0)
    r = await client.post("/transfers", json={"source": alice, "target": bob, "amount": 30})
    assert r.json() == {"source": 70, "target": 30}
    assert (await balance(client, alice), await balance(client, bob)) == (70, 30)
    assert_connections_returned(client)


@only(kinds=("sql",))
async def test_an_error_before_the_commit_rolls_everything_back(
        client: httpx.AsyncClient) -> None:
    alice, bob = await open_account(client, "alice", 10), await open_account(client, "bob", 0)
    r = await client.post("/transfers", json={"source": alice, "target": bob, "amount": 30})
    assert r.status_code == 409
    assert (await balance(client, alice), await balance(client, bob)) == (10, 0)
    assert_connections_returned(client)


@only(kinds=("sql",))
async def test_uncommitted_work_is_rolled_back(client: httpx.AsyncClient) -> None:
    """Needs the `commit="manual"` branch of `SQLAlchemyPool._end`."""
    alice = await open_account(client, "alice", 200)
    r = await client.post(f"/accounts/{alice}/preview-interest", params={"percent": 5})
    assert r.json() == {"balance": 210}  # what it would be ...
    assert await balance(client, alice) == 200  # ... and nothing was kept
    assert_connections_returned(client)
