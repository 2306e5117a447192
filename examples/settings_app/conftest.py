import pytest
from app import Base, manager

pytest_plugins = ["connman.testing.plugin"]


@pytest.fixture(scope="session")
def connman_schema():
    return Base


@pytest.fixture
async def db(connman_client):
    async with manager.session("main") as session:
        yield session
