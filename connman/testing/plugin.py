"""pytest plugin: test a connman app on throwaway servers, every pool rolled back after each test.

Enable it in the root `conftest.py`:

    pytest_plugins = ["connman.testing.plugin"]

and name the app in the pytest configuration (or override the `connman_app` fixture):

    [tool.pytest.ini_options]
    connman_app = "myapp.main:app"

Then `connman_client` is an `httpx.AsyncClient` on the app, its lifespan run, its pools pointed at
throwaway servers and isolated: whatever the test writes through the app's own sessions (Depends,
`async with`, `readonly=True`, the fast path) is rolled back, and each Mongo pool gets a fresh
database, dropped after the test. See docs/testing.md for every fixture.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from ..config import PoolConfig, validate_pools
from ..errors import ConnmanError
from ..manager import ConnectionManager
from .databases import KIND_OF_DRIVER, TestServers, create_schema
from .isolation import Isolation, app_client, open_pools, point, resolve
from .servers import Server, ServerError

__all__ = [
    "connman_app",
    "connman_client",
    "connman_isolation",
    "connman_manager",
    "connman_mongo",
    "connman_mysql",
    "connman_pointed",
    "connman_pools",
    "connman_postgres",
    "connman_schema",
    "connman_servers",
    "connman_test_client",
    "connman_urls",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    """The ini settings that name the app under test."""
    parser.addini("connman_app", "the ASGI app under test, as 'module:attribute'", default="")
    parser.addini("connman_manager", "its ConnectionManager, as 'module:attribute' (default: "
                  "found from the app: its lifespan, app.state, or its module)", default="")


def _load(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in (attr or "app").split("."):
        obj = getattr(obj, part)
    return obj


def _manager_of(app: Any, module_name: str | None) -> ConnectionManager | None:
    candidates: list[Any] = []
    lifespan = getattr(getattr(app, "router", None), "lifespan_context", None)
    candidates.append(getattr(lifespan, "__self__", None))
    for cell in getattr(lifespan, "__closure__", None) or ():
        with contextlib.suppress(ValueError):
            candidates.append(cell.cell_contents)
            candidates.append(getattr(cell.cell_contents, "__self__", None))
    state = getattr(getattr(app, "state", None), "_state", None)
    if isinstance(state, dict):
        candidates.extend(state.values())
    if module_name:
        candidates.extend(vars(importlib.import_module(module_name)).values())
    for obj in candidates:
        if isinstance(obj, ConnectionManager):
            return obj
    return None


# -------------------------------------------------------------------------------- servers
@pytest.fixture(scope="session")
def connman_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServers]:
    """The test session's servers: each started at first use (or `CONNMAN_TEST_<KIND>_URL`)."""
    servers = TestServers(tmp_path_factory.mktemp("connman"))
    yield servers
    servers.stop()


def _server(servers: TestServers, kind: str) -> Server:
    try:
        return servers.server(kind)
    except ServerError as exc:
        pytest.fail(f"connman: the {kind} test server could not start: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def connman_postgres(connman_servers: TestServers) -> Server:
    """A throwaway PostgreSQL server (or `CONNMAN_TEST_POSTGRES_URL`): `.url(driver=...)`."""
    return _server(connman_servers, "postgres")


@pytest.fixture(scope="session")
def connman_mysql(connman_servers: TestServers) -> Server:
    """A throwaway MariaDB server (or `CONNMAN_TEST_MYSQL_URL`)."""
    return _server(connman_servers, "mysql")


@pytest.fixture(scope="session")
def connman_mongo(connman_servers: TestServers) -> Server:
    """A throwaway MongoDB-wire server (or `CONNMAN_TEST_MONGO_URL`)."""
    return _server(connman_servers, "mongo")


# -------------------------------------------------------------------------------- the app
@pytest.fixture(scope="session")
def connman_app(pytestconfig: pytest.Config) -> Any:
    """The app under test, from the `connman_app` ini setting; override it to build your own."""
    path = str(pytestconfig.getini("connman_app") or "")
    if not path:
        pytest.fail("connman: set `connman_app = \"module:app\"` in the pytest configuration, or "
                    "override the connman_app fixture", pytrace=False)
    return _load(path)


@pytest.fixture(scope="session")
def connman_manager(request: pytest.FixtureRequest, pytestconfig: pytest.Config) -> ConnectionManager:
    """The app's `ConnectionManager`: the `connman_manager` ini setting, else found from the app."""
    path = str(pytestconfig.getini("connman_manager") or "")
    if path:
        manager = _load(path)
    else:
        app = request.getfixturevalue("connman_app")
        module = str(pytestconfig.getini("connman_app") or "").partition(":")[0] or None
        manager = _manager_of(app, module)
    if not isinstance(manager, ConnectionManager):
        pytest.fail("connman: no ConnectionManager found; set `connman_manager = \"module:manager\"` "
                    "in the pytest configuration, or override the connman_manager fixture",
                    pytrace=False)
    return manager


def _configured(manager: ConnectionManager) -> dict[str, PoolConfig]:
    """The primary pools' configs; for a manager that reads its pools at open(), what that read
    returns now (the environment, `.env`, the app's settings object)."""
    m: Any = manager
    if getattr(m, "deferred", False):
        names = {key[0] for key in m._providers} | {n.lower() for n, _ in m._pending_hooks}
        try:
            found = validate_pools(m._source() or {})
        except ConnmanError:
            found = {}
        missing = sorted(names - set(found))
        if missing:
            pytest.fail(f"connman: the app reads its pools at open() and no settings name "
                        f"{', '.join(map(repr, missing))} now, so their driver is unknown: "
                        "override connman_urls, e.g. {\"main\": connman_servers.url_for(\"main\", "
                        "\"asyncpg\")}", pytrace=False)
        return found
    replicas = {p.name for r in manager._routers.values() for p in r.replicas}
    return {n: manager.pool(n).config for n in manager.names if n not in replicas}


@pytest.fixture(scope="session")
def connman_urls(connman_manager: ConnectionManager, connman_servers: TestServers) -> dict[str, str]:
    """Where each pool points during the tests: by default, a fresh database per pool on the test
    server of its driver. Override to choose (`{"main": "sqlite+aiosqlite:///..."}`, or
    `connman_servers.url_for("main", "asyncpg")`)."""
    return {name: connman_servers.url_for(name, config)
            for name, config in _configured(connman_manager).items()
            if config.driver_name in KIND_OF_DRIVER}


@pytest.fixture(scope="session")
def connman_schema() -> Any:
    """What to create in every SQL pool's test database once per session: a `MetaData`, a
    declarative base, a list of them, or a dict of them by pool name. Default: nothing."""
    return None


@pytest.fixture(scope="session")
def connman_pointed(connman_manager: ConnectionManager, connman_urls: dict[str, str],
                    connman_schema: Any) -> ConnectionManager:
    """The app's manager with its pools pointed at `connman_urls` and the schema created."""
    manager = connman_manager
    for name, url in connman_urls.items():
        # A Mongo test URL names its database in its path: a `database` field would override it.
        fields: dict[str, Any] = {"database": None} if url.startswith("mongodb") else {}
        point(manager, name, url, **fields)
    resolve(manager)  # pools read at open(): build them now, so they can be isolated
    if connman_schema is not None:
        for name, url in connman_urls.items():
            if url.startswith("mongodb"):
                continue
            schema = (connman_schema.get(name) if isinstance(connman_schema, dict)
                      else connman_schema)
            if schema is not None:
                create_schema(url, schema)
    return manager


# -------------------------------------------------------------------------------- isolation
@pytest.fixture
def connman_isolation(connman_pointed: ConnectionManager) -> Iterator[Isolation]:
    """Every pool of the app isolated for this test (no I/O until the first unit of work).

    SQL: units of work join one outer transaction per pool, rolled back after the test. Mongo: a
    fresh database per pool, dropped after the test.
    """
    isolation = Isolation(connman_pointed).start()
    yield isolation
    isolation.close()


@pytest.fixture
async def connman_pools(connman_isolation: Isolation) -> AsyncIterator[ConnectionManager]:
    """The isolated manager, its pools open in the test's event loop (closed after)."""
    async with open_pools(connman_isolation) as manager:
        yield manager


@pytest.fixture
async def connman_client(connman_app: Any, connman_isolation: Isolation) -> AsyncIterator[Any]:
    """An `httpx.AsyncClient` on the app (base URL `http://test`): the app's lifespan runs in the
    test's event loop, the pools are open (opened here if the lifespan does not) and isolated.
    An exception in a handler is a 500 response, as in production."""
    async with app_client(connman_app, connman_isolation) as client:
        yield client


@pytest.fixture
def connman_test_client(connman_app: Any, connman_isolation: Isolation) -> Iterator[Any]:
    """A Starlette `TestClient` on the app, lifespan run (pools opened in its loop if the lifespan
    does not), isolated: for synchronous tests."""
    with warnings.catch_warnings():
        # Import-time warnings of the versions in use, not of the app: Starlette >= 1.x prefers
        # httpx2 and warns on httpx; Starlette < 1 names an alias anyio >= 4.12 deprecates.
        warnings.filterwarnings("ignore", message=r".*httpx2.*")
        warnings.filterwarnings("ignore", message=r".*anyio\..*alias is deprecated.*",
                                category=DeprecationWarning)
        from starlette.testclient import TestClient

    manager = connman_isolation.manager
    with TestClient(connman_app, raise_server_exceptions=False) as client:
        portal = client.portal
        assert portal is not None  # set while the client's context is open
        opened = False
        if any(manager.pool(n).closed for n in manager.names):
            portal.call(manager.open)
            opened = True
        try:
            yield client
        finally:
            portal.call(connman_isolation.aclose)
            if opened:
                portal.call(manager.close)

