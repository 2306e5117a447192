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

import asyncio
import contextlib
import functools
import importlib
import inspect
import os
import shutil
import tempfile
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .._app import state_values
from .._pool import set_not_open_hint
from ..config import PoolConfig, validate_pools
from ..errors import ConnmanError
from ..manager import ConnectionManager
from .databases import KIND_OF_DRIVER, TestServers, create_schema
from .isolation import (
    Isolation,
    SessionRuntime,
    app_client,
    mark_app,
    open_pools,
    point,
    resolve,
    run_in_thread,
    session_client,
)
from .servers import Server, ServerError

__all__ = [
    "connman_app",
    "connman_base_url",
    "connman_client",
    "connman_isolation",
    "connman_manager",
    "connman_migrate",
    "connman_mongo",
    "connman_mysql",
    "connman_pointed",
    "connman_pools",
    "connman_postgres",
    "connman_runtime",
    "connman_schema",
    "connman_servers",
    "connman_test_client",
    "connman_urls",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    """The ini settings of the plugin (all optional but `connman_app`)."""
    parser.addini("connman_app", "the ASGI app under test: 'module:attribute', or "
                  "'module:factory()' for an app factory", default="")
    parser.addini("connman_manager", "its ConnectionManager, as 'module:attribute' (default: "
                  "found from the app: its lifespan, app.state, or its module)", default="")
    parser.addini("connman_drivers", "the driver of each pool, for pools the app reads at open() "
                  "(from_settings() with no settings present, a function): "
                  "'main=asyncpg docs=pymongo'", type="args", default=[])
    parser.addini("connman_base_url", "the base URL of connman_client and connman_test_client, "
                  "path prefix included (default http://test)", default="")
    parser.addini("connman_loop_scope", "run every async test (pytest-asyncio) in an event loop "
                  "of this scope: 'session' (the pools then open once per session) or 'function'; "
                  "works with pytest-asyncio 0.24 to 1.x alike. Default: pytest-asyncio's own "
                  "setting", default="")
    parser.addini("connman_open_once", "with a session-scoped event loop, run the app's lifespan "
                  "and open the pools once per session instead of once per test "
                  "(default true)", type="bool", default=True)
    parser.addini("connman_migrate", "a callable 'module:function' run once per SQL test "
                  "database, function(pool_name, url), after connman_schema (Alembic: see "
                  "docs/testing.md)", default="")


_ENV_OF_KIND = {"postgres": "CONNMAN_TEST_POSTGRES_URL", "mysql": "CONNMAN_TEST_MYSQL_URL",
                "mongo": "CONNMAN_TEST_MONGO_URL"}


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist: the controller starts the servers once and its workers share them
    (each worker keeps databases of its own); a worker takes the controller's servers."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        for kind, url in dict(workerinput.get("connman_server_urls") or {}).items():
            os.environ.setdefault(_ENV_OF_KIND[kind], url)
    elif config.pluginmanager.hasplugin("xdist") and config.getoption("numprocesses", None):
        config.pluginmanager.register(_SharedServers(config), "connman-shared-servers")


class _SharedServers:
    """The xdist controller's side: one server per kind the app's pools need, for every worker."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.servers: TestServers | None = None
        self.urls: dict[str, str] = {}

    def _kinds(self) -> set[str]:
        """The server kinds the app's pools need (nothing when the app cannot be read here)."""
        try:
            ini = self.config.getini
            app_path = str(ini("connman_app") or "")
            manager_path = str(ini("connman_manager") or "")
            if manager_path:
                manager = _load(manager_path)
            elif app_path:
                manager = _manager_of(_load(app_path), app_path.partition(":")[0] or None)
            else:
                return set()
            if not isinstance(manager, ConnectionManager):
                return set()
            configured = _configured(manager, _drivers(self.config))
        except BaseException:  # the workers will say what is wrong, in a test
            return set()
        drivers = {c if isinstance(c, str) else c.driver_name for c in configured.values()}
        return {KIND_OF_DRIVER[d] for d in drivers if d in KIND_OF_DRIVER} - {"sqlite"}

    def pytest_configure_node(self, node: Any) -> None:
        """Start the shared servers at the first worker; hand their URLs to each worker."""
        if self.servers is None:
            self.servers = TestServers(Path(tempfile.mkdtemp(prefix="connman-xdist-")),
                                       worker="")
            for kind in sorted(self._kinds()):
                if os.environ.get(_ENV_OF_KIND[kind]):
                    continue  # a server of the user's: the workers use it as it is
                try:
                    server = self.servers.server(kind)
                except ServerError:
                    continue  # each worker tries again and fails its tests with the reason
                self.urls[kind] = (server.url(database="connman") if kind == "mongo"
                                   else server.url())
        node.workerinput["connman_server_urls"] = dict(self.urls)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        """Stop the shared servers after every worker has finished."""
        if self.servers is not None:
            self.servers.stop()
            shutil.rmtree(self.servers.tmpdir, ignore_errors=True)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`connman_loop_scope`: mark each pytest-asyncio test with that loop scope (pytest-asyncio's
    own recipe, which works on every version; `asyncio_default_test_loop_scope` needs >= 0.26)."""
    scope = str(config.getini("connman_loop_scope") or "")
    if not scope:
        return
    if scope not in ("function", "class", "module", "package", "session"):
        raise pytest.UsageError(f"connman_loop_scope: {scope!r} is not a pytest scope")
    try:
        from pytest_asyncio import is_async_test
    except ImportError:
        return
    marker = pytest.mark.asyncio(loop_scope=scope)
    for item in items:
        if not is_async_test(item):
            continue
        own = item.get_closest_marker("asyncio")
        if own is None or not (own.kwargs.get("loop_scope") or own.kwargs.get("scope")):
            item.add_marker(marker, append=False)


def _load(path: str) -> Any:
    """`module:attribute` (dotted), `module:factory()` calls it; a bare module means `:app`."""
    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    call = attr.endswith("()")
    obj: Any = module
    for part in (attr[:-2] if call else attr or "app").split("."):
        obj = getattr(obj, part)
    return obj() if call else obj


def _drivers(pytestconfig: pytest.Config) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in pytestconfig.getini("connman_drivers") or []:
        name, sep, driver = str(item).partition("=")
        if not sep or driver not in KIND_OF_DRIVER:
            pytest.fail(f"connman: connman_drivers: {item!r} is not 'pool=driver' with a driver "
                        f"among {', '.join(sorted(KIND_OF_DRIVER))}", pytrace=False)
        out[name.strip().lower()] = driver
    return out


def _walk(obj: Any, depth: int = 0, seen: set[int] | None = None) -> Iterator[Any]:
    """`obj` and what it wraps: bound `__self__`, `__wrapped__`, closure cells, partial args —
    how FastAPI/Starlette versions wrap a lifespan (merged routers, `asynccontextmanager`, the
    dependency-scope wrapper), and how apps wrap theirs."""
    seen = set() if seen is None else seen
    if obj is None or id(obj) in seen or depth > 6:
        return
    seen.add(id(obj))
    yield obj
    if isinstance(obj, (str, bytes, int, float, bool, type)):
        return
    nexts: list[Any] = [getattr(obj, "__self__", None), getattr(obj, "__wrapped__", None),
                        getattr(obj, "__func__", None), getattr(obj, "func", None)]
    nexts.extend(getattr(obj, "args", None) or () if isinstance(obj, functools.partial) else ())
    for cell in getattr(obj, "__closure__", None) or ():
        with contextlib.suppress(ValueError):
            nexts.append(cell.cell_contents)
    if isinstance(obj, (list, tuple)):
        nexts.extend(obj)
    for n in nexts:
        yield from _walk(n, depth + 1, seen)


def _manager_of(app: Any, module_name: str | None) -> ConnectionManager | None:
    candidates: list[Any] = []
    router = getattr(app, "router", None)
    candidates.extend(_walk(getattr(router, "lifespan_context", None)))
    candidates.extend(state_values(app))
    if module_name:
        candidates.extend(vars(importlib.import_module(module_name)).values())
    for obj in candidates:
        if isinstance(obj, ConnectionManager):
            return obj
    return None


def _refuse_autocommit(manager: ConnectionManager, name: str) -> None:
    """Refuse at setup what would let a pool's writes escape the test's transaction."""
    config = manager.pool(name).config
    options = config.options or {}
    found = None
    if str(options.get("isolation_level", "")).upper() == "AUTOCOMMIT":
        found = "options={'isolation_level': 'AUTOCOMMIT'}"
    elif str((options.get("execution_options") or {}).get("isolation_level", "")).upper() == \
            "AUTOCOMMIT":
        found = "options={'execution_options': {'isolation_level': 'AUTOCOMMIT'}}"
    elif (options.get("connect_args") or {}).get("autocommit") is True:
        found = "options={'connect_args': {'autocommit': True}}"
    if found:
        pytest.fail(f"connman: pool {name!r} sets {found}: every statement would commit at once, "
                    "past the test's transaction, so nothing could be rolled back. Drop the "
                    "option for the tests (override connman_urls/point() with options={}), or "
                    "keep the isolation off this pool", pytrace=False)


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


def _configured(manager: ConnectionManager, drivers: dict[str, str]) -> dict[str, PoolConfig | str]:
    """The primary pools' configs (or driver names, from `connman_drivers`); for a manager that
    reads its pools at open(), what that read returns now (the environment, `.env`, the app's
    settings object), the `connman_drivers` setting filling in what it lacks."""
    m: Any = manager
    if getattr(m, "deferred", False):
        names = m.requested_pools() | set(drivers)
        try:
            found: dict[str, PoolConfig | str] = dict(validate_pools(m._source() or {}))
        except ConnmanError:
            found = {}
        for name, driver in drivers.items():
            found[name] = driver  # told: wins over what a laptop's .env says
        missing = sorted(names - set(found))
        if missing:
            example = " ".join(f"{n}=asyncpg" for n in missing)
            pytest.fail(f"connman: the app reads its pools at open() and no settings name "
                        f"{', '.join(map(repr, missing))} now, so their driver is unknown: name "
                        f"it in the pytest configuration, e.g. `connman_drivers = {example}` "
                        f"(drivers: {', '.join(sorted(KIND_OF_DRIVER))})", pytrace=False)
        return found
    replicas = {p.name for r in manager._routers.values() for p in r.replicas}
    return {n: manager.pool(n).config for n in manager.names if n not in replicas}


@pytest.fixture(scope="session")
def connman_urls(connman_manager: ConnectionManager, connman_servers: TestServers,
                 pytestconfig: pytest.Config) -> dict[str, str]:
    """Where each pool points during the tests: by default, a fresh database per pool on the test
    server of its driver (the `connman_drivers` ini setting names it where the app's settings do
    not). Override to choose (`{"main": "sqlite+aiosqlite:///..."}`, or
    `connman_servers.url_for("main", "asyncpg")`)."""
    out: dict[str, str] = {}
    for name, config in _configured(connman_manager, _drivers(pytestconfig)).items():
        driver = config if isinstance(config, str) else config.driver_name
        if driver in KIND_OF_DRIVER:
            out[name] = connman_servers.url_for(name, driver)
    return out


@pytest.fixture(scope="session")
def connman_schema() -> Any:
    """What to create in every SQL pool's test database once per session: a `MetaData`, a
    declarative base, a list of them, or a dict of them by pool name. Default: nothing."""
    return None


@pytest.fixture(scope="session")
def connman_migrate(pytestconfig: pytest.Config) -> Callable[[str, str], Any] | None:
    """Run once per SQL test database, after `connman_schema`: `migrate(pool_name, url)` (a plain
    function, run on a thread of its own, so it may call `asyncio.run` — Alembic's async env.py
    does). Default: the `connman_migrate` ini setting ('module:function'), else nothing."""
    path = str(pytestconfig.getini("connman_migrate") or "")
    return _load(path) if path else None


@pytest.fixture(scope="session")
def connman_pointed(connman_manager: ConnectionManager, connman_urls: dict[str, str],
                    connman_schema: Any, connman_migrate: Callable[[str, str], Any] | None
                    ) -> Iterator[ConnectionManager]:
    """The app's manager with its pools pointed at `connman_urls`, the schema created and the
    migrations run; refuses a pool whose options would commit past the test's transaction."""
    manager = connman_manager
    for name, url in connman_urls.items():
        # A Mongo test URL names its database in its path: a `database` field would override it.
        fields: dict[str, Any] = {"database": None} if url.startswith("mongodb") else {}
        point(manager, name, url, **fields)
    resolve(manager)  # pools read at open(): build them now, so they can be isolated
    for name in manager.names:
        pool: Any = manager.pool(name)
        # No maintenance task in the test's loop: a test run has no idle connections to trim,
        # and a suite that awaits every task of its loop must not wait on one that never ends.
        pool.run_maintenance = False
        if pool.backend == "sqlalchemy":
            _refuse_autocommit(manager, name)
    sql = {n: u for n, u in connman_urls.items() if not u.startswith("mongodb")}
    if connman_schema is not None:
        for name, url in sql.items():
            schema = (connman_schema.get(name) if isinstance(connman_schema, dict)
                      else connman_schema)
            if schema is not None:
                create_schema(url, schema)
    if connman_migrate is not None:
        for name, url in sql.items():
            run_in_thread(_call(connman_migrate, name, url))
    previous = set_not_open_hint(_not_open_hint(manager))
    try:
        yield manager
    finally:
        set_not_open_hint(previous)


async def _call(fn: Callable[[str, str], Any], name: str, url: str) -> None:
    result = await asyncio.to_thread(fn, name, url)
    if inspect.isawaitable(result):
        await result


def _not_open_hint(manager: ConnectionManager) -> str:
    return ("connman's test plugin points and opens the pools of the app's manager "
            f"({', '.join(map(repr, manager.names))}) in connman_client, connman_test_client and "
            "connman_pools; a ConnectionManager the tests build themselves is not pointed or "
            "opened by it: use the app's (the connman_manager fixture) or open this one "
            "yourself (`async with manager:`)")


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


def _open_once(request: pytest.FixtureRequest) -> bool:
    """Whether the test runs in a session-scoped asyncio loop (pytest-asyncio's marker or ini) and
    `connman_open_once` is on: then the lifespan and pools stay open from test to test."""
    if not request.config.getini("connman_open_once"):
        return False
    node = request.node
    if node.get_closest_marker("anyio") is not None:
        return False
    marker = node.get_closest_marker("asyncio")
    scope = (marker.kwargs.get("loop_scope") or marker.kwargs.get("scope")) if marker else None
    if scope is None:
        try:
            scope = request.config.getini("asyncio_default_test_loop_scope")
        except ValueError:  # pytest-asyncio < 0.26: no such setting, tests use function loops
            scope = None
    return scope == "session"


@pytest.fixture(scope="session")
def connman_runtime() -> Iterator[SessionRuntime]:
    """The app's lifespan and pools, kept open across tests that share a session-scoped loop."""
    runtime = SessionRuntime()
    yield runtime
    runtime.close()


@pytest.fixture
async def connman_pools(request: pytest.FixtureRequest, connman_isolation: Isolation,
                        connman_runtime: SessionRuntime) -> AsyncIterator[ConnectionManager]:
    """The isolated manager, its pools open in the test's event loop: opened once per session
    with a session-scoped loop, else opened and closed around the test."""
    if _open_once(request):
        await connman_runtime.ensure(None, connman_isolation)
        try:
            yield connman_isolation.manager
        finally:
            await connman_isolation.aclose()
        return
    async with open_pools(connman_isolation) as manager:
        yield manager


@pytest.fixture(scope="session")
def connman_base_url(pytestconfig: pytest.Config) -> str:
    """The clients' base URL, path prefix included: the `connman_base_url` ini setting, else
    `http://test`. Override for a host TrustedHostMiddleware accepts, or an app under `/api`."""
    return str(pytestconfig.getini("connman_base_url") or "") or "http://test"


@pytest.fixture
async def connman_client(request: pytest.FixtureRequest, connman_app: Any,
                         connman_isolation: Isolation, connman_base_url: str,
                         connman_runtime: SessionRuntime) -> AsyncIterator[Any]:
    """An `httpx.AsyncClient` on the app (base URL: `connman_base_url`): the app's lifespan runs
    in the test's event loop, the pools are open (opened here if the lifespan does not) and
    isolated. With a session-scoped loop the lifespan and pools stay open from test to test (once
    per session); else they run around each test. A handler's exception is a 500 response."""
    if _open_once(request):
        async with session_client(connman_app, connman_isolation, connman_runtime,
                                  base_url=connman_base_url) as client:
            yield client
        return
    async with app_client(connman_app, connman_isolation, base_url=connman_base_url) as client:
        yield client


@pytest.fixture
def connman_test_client(connman_app: Any, connman_isolation: Isolation, connman_base_url: str,
                        connman_runtime: SessionRuntime) -> Iterator[Any]:
    """A Starlette `TestClient` on the app, lifespan run (pools opened in its loop if the lifespan
    does not), isolated: for synchronous tests."""
    with warnings.catch_warnings():
        # Import-time warnings of the versions in use, not of the app: Starlette >= 1.x prefers
        # httpx2 and warns on httpx; Starlette < 1 names an alias anyio >= 4.12 deprecates.
        warnings.filterwarnings("ignore", message=r".*httpx2.*")
        warnings.filterwarnings("ignore", message=r".*anyio\..*alias is deprecated.*",
                                category=DeprecationWarning)
        from starlette.testclient import TestClient

    # Pools kept open in the session loop by earlier async tests: close them there (idle now),
    # the client's own loop opens them; the next async test reopens them in the session loop.
    connman_runtime.close()
    manager = connman_isolation.manager
    with TestClient(mark_app(connman_app), raise_server_exceptions=False,
                    base_url=connman_base_url) as client:
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

