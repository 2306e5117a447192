import pytest
from notes import Base, manager

pytest_plugins = ["connman.testing.plugin"]


@pytest.fixture(scope="session")
def connman_schema():
    # Created once per test session in each SQL pool's test database (an app with migrations
    # would name them in `connman_migrate` instead).
    return Base


@pytest.fixture
async def db(connman_client):
    # The test's own unit of work, to arrange data and assert on it: it joins the test's
    # isolation, takes turns with the requests, sees what they commit and is seen by them.
    async with manager.session("main") as session:
        yield session
