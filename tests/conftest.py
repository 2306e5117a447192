"""Real servers for the suite: started once per run on random loopback ports, stopped at the end.

`CONNMAN_TEST_POSTGRES_URL`, `CONNMAN_TEST_MYSQL_URL`, `CONNMAN_TEST_MONGO_URL` and
`CONNMAN_TEST_PGBOUNCER_URL` point the suite at running servers instead. A server that cannot start
fails the tests that need it, loudly; nothing is skipped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from connman import ConnectionManager
from connman.testing.invariant import gate_violations, settle
from connman.testing.isolation import close_mongo_clients
from connman.testing.servers import (
    MariaDBServer,
    MongoWireServer,
    PgBouncerServer,
    PostgresServer,
    Server,
    ServerError,
    server_from_env,
)

from ._targets import Ops, Target

_started: dict[str, Server] = {}
_failed: dict[str, str] = {}


def _server(kind: str, factory: Callable[[], Server]) -> Server:
    if kind in _failed:
        pytest.fail(f"{kind} server could not start: {_failed[kind]}", pytrace=False)
    if kind not in _started:
        server = server_from_env(kind)
        if server is None:
            try:
                server = factory().start()
            except ServerError as exc:
                _failed[kind] = str(exc)
                pytest.fail(f"{kind} server could not start: {exc}", pytrace=False)
        _started[kind] = server
    return _started[kind]


@pytest.fixture(autouse=True)
async def _gate_invariant() -> AsyncIterator[None]:
    """After every test, on every backend: no lease left held and no connection checked out past
    the gate, in the pools still open and in what pools reported when they closed."""
    gate_violations()  # what an earlier test left is that test's report, not this one's
    yield
    problems = await settle()
    if problems:
        pytest.fail("gate invariant broken: " + "; ".join(problems), pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _stop_servers() -> Iterator[None]:
    yield
    close_mongo_clients()  # the plugin's per-test database drops, run in this process
    for server in reversed(list(_started.values())):
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Server:
    return _server("postgres", PostgresServer)


@pytest.fixture(scope="session")
def mysql_server() -> Server:
    return _server("mysql", MariaDBServer)


@pytest.fixture(scope="session")
def mongo_server() -> Server:
    return _server("mongo", MongoWireServer)


@pytest.fixture(scope="session")
def pgbouncer_server(postgres_server: Server) -> Server:
    assert isinstance(postgres_server, PostgresServer) or server_from_env("pgbouncer")
    return _server("pgbouncer", lambda: PgBouncerServer(postgres_server))  # type: ignore[arg-type]


TARGETS: dict[str, tuple[str, str, str | None]] = {
    # id: (kind, driver, server fixture)
    "postgres": ("sql", "asyncpg", "postgres_server"),
    "postgres-psycopg": ("sql", "psycopg", "postgres_server"),
    "mysql-aiomysql": ("sql", "aiomysql", "mysql_server"),
    "mysql-asyncmy": ("sql", "asyncmy", "mysql_server"),
    "sqlite": ("sql", "aiosqlite", None),
    "mongo-pymongo": ("mongo", "pymongo", "mongo_server"),
    "mongo-motor": ("mongo", "motor", "mongo_server"),
}
_MARKS = {"postgres_server": pytest.mark.postgres, "mysql_server": pytest.mark.mysql,
          "mongo_server": pytest.mark.mongo}


def target_params(*, kinds: tuple[str, ...] = ("sql", "mongo"),
                  exclude: tuple[str, ...] = ()) -> list[Any]:
    """pytest params for the targets of the given kinds, each with its backend marker."""
    return [pytest.param(tid, id=tid, marks=[_MARKS[fx]] if fx else [])
            for tid, (kind, _, fx) in TARGETS.items() if kind in kinds and tid not in exclude]


def only(*, kinds: tuple[str, ...] = ("sql", "mongo"), exclude: tuple[str, ...] = ()) -> Any:
    """Run a test on a subset of the targets (instead of skipping the rest)."""
    return pytest.mark.parametrize("target", target_params(kinds=kinds, exclude=exclude),
                                   indirect=True)


@pytest.fixture(params=target_params())
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Target:
    """Every backend, one at a time (parametrised)."""
    return make_target(request, tmp_path_factory, request.param)


@pytest.fixture(params=target_params(kinds=("sql",)))
def sql_target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Target:
    """Every SQL backend, one at a time (parametrised)."""
    return make_target(request, tmp_path_factory, request.param)


@pytest.fixture(params=target_params(exclude=("sqlite",)))
def server_target(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Target:
    """Every backend with a network server (not SQLite), one at a time."""
    return make_target(request, tmp_path_factory, request.param)


def make_target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                tid: str) -> Target:
    kind, driver, fixture = TARGETS[tid]
    server = request.getfixturevalue(fixture) if fixture else None
    sqlite_dir = None if fixture else str(tmp_path_factory.mktemp("sqlite"))
    return Target(tid, kind, driver, server, sqlite_dir)


@pytest.fixture
async def managers() -> AsyncIterator[list[ConnectionManager]]:
    """Managers a test made; each is closed at teardown even if the test failed."""
    made: list[ConnectionManager] = []
    yield made
    for m in made:
        await m.close()


@pytest.fixture
def make_manager(managers: list[ConnectionManager], target: Target
                 ) -> Callable[..., ConnectionManager]:
    """Build a manager with one pool "main" on the current target; fields override defaults."""

    def make(**fields: Any) -> ConnectionManager:
        m = ConnectionManager({"main": target.config(**fields)})
        managers.append(m)
        return m

    return make


@pytest.fixture
async def ops(target: Target) -> Ops:
    return Ops(target)
