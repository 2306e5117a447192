"""Two ways to run the same tests (run.py): COST_MODE=plugin (connman's plugin, per-test
rollback) or COST_MODE=own (what an app's own suite does: its manager opened once on a test
database, every table emptied after each test)."""

import os

import httpx
import pytest
from app import Base, app, manager
from sqlalchemy import text

if os.environ.get("COST_MODE", "plugin") == "plugin":
    pytest_plugins = ["connman.testing.plugin"]

    @pytest.fixture(scope="session")
    def connman_schema():
        return Base

    @pytest.fixture
    async def client(connman_client):
        return connman_client

else:
    @pytest.fixture(scope="session")
    async def opened():
        async with manager:
            async with manager.session("main") as db:
                await (await db.connection()).run_sync(Base.metadata.drop_all)
                await (await db.connection()).run_sync(Base.metadata.create_all)
            yield

    @pytest.fixture
    async def client(opened):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c
        async with manager.session("main") as db:
            await db.execute(text("TRUNCATE tags, items RESTART IDENTITY"))
