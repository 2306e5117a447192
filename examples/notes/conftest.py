import pytest
from notes import Base

pytest_plugins = ["connman.testing.plugin"]


@pytest.fixture(scope="session")
def connman_schema():
    # Created once per test session in each SQL pool's test database (an app with migrations
    # would run them here instead).
    return Base
