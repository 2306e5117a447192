"""connman's pytest plugin, tested the way users run it: inner test suites run by `pytester` in a
subprocess, against the suite's real servers (passed on as `CONNMAN_TEST_<KIND>_URL`).

Each inner app configures its pools with URLs that lead nowhere (port 1): the plugin must point
them at the test servers after import, or every inner test fails.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connman.testing.servers import Server

from ._targets import Target
from .conftest import only

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent

BOGUS = {
    "asyncpg": "postgresql+asyncpg://prod@127.0.0.1:1/prod",
    "psycopg": "postgresql+psycopg://prod@127.0.0.1:1/prod",
    "aiomysql": "mysql+aiomysql://prod@127.0.0.1:1/prod",
    "asyncmy": "mysql+asyncmy://prod@127.0.0.1:1/prod",
    "aiosqlite": "sqlite+aiosqlite:////nonexistent/prod.db",
    "pymongo": "mongodb://127.0.0.1:1/prod",
    "motor": "mongodb://127.0.0.1:1/prod",
}

# Fast-path statements per driver: (insert 'k', count rows).
RAW = {
    "asyncpg": ("await conn.execute(\"INSERT INTO items (k) VALUES ('raw')\")",
                "n = await conn.fetchval('SELECT count(*) FROM items')"),
    "psycopg": ("await conn.execute(\"INSERT INTO items (k) VALUES ('raw')\"); await conn.commit()",
                "n = (await (await conn.execute('SELECT count(*) FROM items')).fetchone())[0]"),
    "aiosqlite": ("await conn.execute(\"INSERT INTO items (k) VALUES ('raw')\"); await conn.commit()",
                  "n = (await (await conn.execute('SELECT count(*) FROM items')).fetchone())[0]"),
}
for _d in ("aiomysql", "asyncmy"):
    RAW[_d] = (
        "async with conn.cursor() as cur:\n"
        "            await cur.execute(\"INSERT INTO items (k) VALUES ('raw')\")\n"
        "        await conn.commit()",
        "async with conn.cursor() as cur:\n"
        "            await cur.execute('SELECT count(*) FROM items')\n"
        "            n = (await cur.fetchone())[0]")


def server_env(target: Target | None) -> dict[str, str]:
    """The environment an inner run needs: the outer suite's servers, connman importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNMAN_TEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    if target is not None and target.server is not None:
        kind = "MONGO" if target.kind == "mongo" else (
            "POSTGRES" if target.is_postgres else "MYSQL")
        env[f"CONNMAN_TEST_{kind}_URL"] = target.server.url(
            **({"database": "connman"} if target.kind == "mongo" else {}))
    return env


def sql_app(driver: str, *, lifespan: bool = True) -> str:
    insert, count = RAW[driver]
    return textwrap.dedent(f'''
        from fastapi import Depends, FastAPI
        from sqlalchemy import String, select
        from sqlalchemy.ext.asyncio import AsyncSession
        from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

        from connman import ConnectionManager


        class Base(DeclarativeBase):
            pass


        class Item(Base):
            __tablename__ = "items"
            k: Mapped[str] = mapped_column(String(40), primary_key=True)


        manager = ConnectionManager({{"main": {{"url": {BOGUS[driver]!r}, "size": 2, "overflow": 2,
                                               "timeout": 5, "replicas": [{BOGUS[driver]!r}]}}}})
        app = FastAPI({"lifespan=manager.lifespan" if lifespan else ""})


        @app.post("/items/{{k}}", status_code=201)
        async def add(k: str, db: AsyncSession = Depends(manager.session("main"))):
            db.add(Item(k=k))


        @app.post("/fail/{{k}}")
        async def fail(k: str, db: AsyncSession = Depends(manager.session("main"))):
            db.add(Item(k=k))
            await db.flush()
            raise RuntimeError("the handler fails after writing")


        @app.post("/nested")
        async def nested(db: AsyncSession = Depends(manager.session("main"))):
            db.add(Item(k="n1"))
            try:
                async with db.begin_nested():
                    db.add(Item(k="n2"))
                    await db.flush()
                    raise ValueError
            except ValueError:
                pass
            db.add(Item(k="n3"))


        @app.get("/items")
        async def items(db: AsyncSession = Depends(manager.session("main", readonly=True))):
            return list((await db.execute(select(Item.k).order_by(Item.k))).scalars())


        @app.post("/raw")
        async def raw():
            async with manager.connection("main") as conn:
                __INSERT__


        @app.get("/raw")
        async def raw_count():
            async with manager.connection("main") as conn:
                __COUNT__
            return n
    ''').replace("__INSERT__", insert).replace("__COUNT__", count)


SQL_TESTS = '''
from sqlalchemy import select

from app import Item, manager


async def test_1_commits_over_http(connman_client):
    before = manager.stats("main")["requests_num"]
    for k in ("a", "b"):
        assert (await connman_client.post(f"/items/{k}")).status_code == 201
    assert (await connman_client.get("/items")).json() == ["a", "b"]
    assert manager.stats("main")["requests_num"] - before >= 2


async def test_2_sees_none(connman_client):
    assert (await connman_client.get("/items")).json() == []
    assert (await connman_client.get("/raw")).json() == 0


async def test_failing_handler_rolls_back(connman_client):
    await connman_client.post("/items/x")
    assert (await connman_client.post("/fail/y")).status_code == 500
    assert (await connman_client.get("/items")).json() == ["x"]


async def test_nested_savepoints_in_app_code(connman_client):
    assert (await connman_client.post("/nested")).status_code == 200
    assert (await connman_client.get("/items")).json() == ["n1", "n3"]


async def test_readonly_session_sees_the_tests_writes(connman_client):
    async with manager.session("main") as db:
        db.add(Item(k="w"))
    async with manager.session("main", readonly=True) as ro:
        assert list((await ro.execute(select(Item.k))).scalars()) == ["w"]
    assert manager.stats("main.replica1")["requests_num"] >= 1  # it went through the replica pool


async def test_fast_path_writes_are_seen_and_rolled_back(connman_client):
    await connman_client.post("/raw")
    assert (await connman_client.get("/raw")).json() == 1
    assert (await connman_client.get("/items")).json() == ["raw"]


async def test_z_nothing_left(connman_client):
    assert (await connman_client.get("/items")).json() == []
'''


def mongo_app(driver: str) -> str:
    return textwrap.dedent(f'''
        from typing import Any

        from fastapi import Depends, FastAPI

        from connman import ConnectionManager

        manager = ConnectionManager({{"main": {{"url": {BOGUS[driver]!r}, "driver": {driver!r},
                                               "size": 2, "overflow": 2, "timeout": 5}}}})
        app = FastAPI(lifespan=manager.lifespan)


        @app.post("/items/{{k}}", status_code=201)
        async def add(k: str, db: Any = Depends(manager.session("main"))):
            await db.items.insert_one({{"_id": k}})


        @app.post("/fail/{{k}}")
        async def fail(k: str, db: Any = Depends(manager.session("main"))):
            await db.items.insert_one({{"_id": k}})
            raise RuntimeError("the handler fails after writing")


        @app.get("/items")
        async def items(db: Any = Depends(manager.session("main", readonly=True))):
            return sorted([d["_id"] async for d in db.items.find({{}})])
    ''')


MONGO_TESTS = '''
from app import manager


async def test_1_commits_over_http(connman_client):
    for k in ("a", "b"):
        assert (await connman_client.post(f"/items/{k}")).status_code == 201
    assert (await connman_client.get("/items")).json() == ["a", "b"]
    assert manager.stats("main")["requests_num"] >= 3


async def test_2_sees_none(connman_client):
    assert (await connman_client.get("/items")).json() == []


async def test_failing_handler_keeps_its_write_as_in_production(connman_client):
    # No transaction (the `transaction` field is off): what the handler wrote before failing
    # stays, as it would in production, until the test's database is dropped.
    assert (await connman_client.post("/fail/y")).status_code == 500
    assert (await connman_client.get("/items")).json() == ["y"]


async def test_readonly_session_sees_the_tests_writes(connman_client):
    async with manager.session("main") as db:
        await db.items.insert_one({"_id": "w"})
    async with manager.session("main", readonly=True) as ro:
        assert [d["_id"] async for d in ro.items.find({})] == ["w"]


async def test_z_nothing_left(connman_client):
    assert (await connman_client.get("/items")).json() == []
'''

SCHEMA_CONFTEST = '''
import pytest

from app import Base

pytest_plugins = ["connman.testing.plugin"]


@pytest.fixture(scope="session")
def connman_schema():
    return Base
'''

MONGO_CONFTEST = 'pytest_plugins = ["connman.testing.plugin"]\n'


def ini(loop_scope: str = "session", mode: str = "auto", extra: str = "") -> str:
    return textwrap.dedent(f"""
        [pytest]
        connman_app = app:app
        asyncio_mode = {mode}
        asyncio_default_fixture_loop_scope = {loop_scope}
        asyncio_default_test_loop_scope = {loop_scope}
        filterwarnings =
            error
            ignore:.*Motor.*deprecated:DeprecationWarning
        {extra}
    """)


def run_inner(pytester: pytest.Pytester, target: Target | None, *args: str) -> Any:
    env = server_env(target)
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", *args, timeout=240)
    finally:
        os.environ.clear()
        os.environ.update(old)


def check(result: Any, passed: int) -> None:
    out = result.stdout.str()
    assert result.ret == 0, out[-6000:] + result.stderr.str()[-3000:]
    result.assert_outcomes(passed=passed)


def test_every_backend(pytester: pytest.Pytester, target: Target) -> None:
    """Per backend: rows committed over HTTP in test 1 are gone in test 2; a failing handler, app
    savepoints, readonly reads and the fast path behave as in production, within the test."""
    if target.is_sql:
        pytester.makepyfile(app=sql_app(target.driver), conftest=SCHEMA_CONFTEST,
                            test_inner=SQL_TESTS)
        passed = 7
    else:
        pytester.makepyfile(app=mongo_app(target.driver), conftest=MONGO_CONFTEST,
                            test_inner=MONGO_TESTS)
        passed = 5
    pytester.makefile(".ini", pytest=ini())
    check(run_inner(pytester, target), passed)


LOOP_TESTS = '''
from app import Item, manager
from sqlalchemy import func, select


async def count():
    async with manager.session("main") as db:
        return (await db.execute(select(func.count()).select_from(Item))).scalar_one()


async def test_1_writes(POOLS):
    async with manager.session("main") as db:
        db.add(Item(k="a"))
    assert await count() == 1


async def test_2_sees_none(POOLS):
    assert await count() == 0
'''


@only(kinds=("sql",), exclude=("mysql-asyncmy", "mysql-aiomysql"))
@pytest.mark.parametrize("loop_scope", ["session", "function"])
def test_pools_fixture_with_pytest_asyncio(pytester: pytest.Pytester, target: Target,
                                           loop_scope: str) -> None:
    """`connman_pools` opens the pools in the test's own loop, session- or function-scoped."""
    pytester.makepyfile(app=sql_app(target.driver, lifespan=False), conftest=SCHEMA_CONFTEST,
                        test_inner=LOOP_TESTS.replace("POOLS", "connman_pools"))
    pytester.makefile(".ini", pytest=ini(loop_scope))
    check(run_inner(pytester, target), 2)


@only(kinds=("sql",), exclude=("mysql-asyncmy", "mysql-aiomysql"))
def test_pools_opened_once_per_session(pytester: pytest.Pytester, target: Target) -> None:
    """The app's own session fixture opens the pools once; `connman_isolation` alone rolls back
    each test, in the (idle) session loop, at its teardown."""
    conftest = SCHEMA_CONFTEST + textwrap.dedent('''

        @pytest.fixture(scope="session")
        async def opened(connman_pointed):
            async with connman_pointed:
                yield connman_pointed


        @pytest.fixture
        def pools(opened, connman_isolation):
            return opened
    ''')
    pytester.makepyfile(app=sql_app(target.driver, lifespan=False), conftest=conftest,
                        test_inner=LOOP_TESTS.replace("POOLS", "pools"))
    pytester.makefile(".ini", pytest=ini("session"))
    check(run_inner(pytester, target), 2)


@only(kinds=("sql",), exclude=("mysql-asyncmy", "mysql-aiomysql"))
@pytest.mark.parametrize("lifespan", [True, False], ids=["lifespan", "no-lifespan"])
def test_anyio_plugin(pytester: pytest.Pytester, target: Target, lifespan: bool) -> None:
    """anyio's pytest plugin (pytest-asyncio in strict mode beside it) runs the async fixtures."""
    tests = SQL_TESTS.replace("async def test_", "@pytest.mark.anyio\nasync def test_")
    tests = "import pytest\n\n\n@pytest.fixture\ndef anyio_backend():\n    return 'asyncio'\n" + tests
    pytester.makepyfile(app=sql_app(target.driver, lifespan=lifespan), conftest=SCHEMA_CONFTEST,
                        test_inner=tests)
    pytester.makefile(".ini", pytest=ini("function", mode="strict"))
    check(run_inner(pytester, target), 7)


TESTCLIENT_TESTS = '''
from app import manager


def test_1_commits(connman_test_client):
    assert connman_test_client.post("/items/a").status_code == 201
    assert connman_test_client.post("/fail/b").status_code == 500
    assert connman_test_client.get("/items").json() == ["a"]
    assert connman_test_client.get("/raw").json() == 1  # the fast path sees the same rows


def test_2_sees_none(connman_test_client):
    assert connman_test_client.get("/items").json() == []
'''


@only(kinds=("sql",), exclude=("mysql-asyncmy", "mysql-aiomysql"))
@pytest.mark.parametrize("lifespan", [True, False], ids=["lifespan", "no-lifespan"])
def test_starlette_testclient(pytester: pytest.Pytester, target: Target, lifespan: bool) -> None:
    """Synchronous tests with `TestClient`: the pools live in the client's own loop."""
    pytester.makepyfile(app=sql_app(target.driver, lifespan=lifespan), conftest=SCHEMA_CONFTEST,
                        test_inner=TESTCLIENT_TESTS)
    pytester.makefile(".ini", pytest=ini("function"))
    check(run_inner(pytester, target), 2)


def test_example_suite(postgres_server: Server, mongo_server: Server, tmp_path: Path) -> None:
    """examples/notes: the suite users copy passes as they would run it (its own pytest.ini)."""
    env = server_env(None)
    env["CONNMAN_TEST_POSTGRES_URL"] = postgres_server.url()
    env["CONNMAN_TEST_MONGO_URL"] = mongo_server.url(database="connman")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path}"],
        cwd=REPO / "examples" / "notes", env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "6 passed" in proc.stdout


def test_settings_example_passes_with_no_settings(postgres_server: Server, mongo_server: Server,
                                                  tmp_path: Path) -> None:
    """examples/settings_app: `from_settings()` with no CONNMAN_POOLS__* and no .env (a CI
    runner), its pools' drivers named by one ini line: passes the first time."""
    env = server_env(None)
    for key in [k for k in env if k.startswith("CONNMAN_")]:
        del env[key]
    env["CONNMAN_TEST_POSTGRES_URL"] = postgres_server.url()
    env["CONNMAN_TEST_MONGO_URL"] = mongo_server.url(database="connman")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path}"],
        cwd=REPO / "examples" / "settings_app", env=env, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "2 passed" in proc.stdout


# ------------------------------------------------------------------------------------------------
# The parts, in process: TestBinding, Isolation, point().

async def _make_table(manager: Any, ops: Any) -> None:
    async with manager.session("main") as unit:
        await ops.create(unit)


@contextlib.contextmanager
def inside_app() -> Iterator[None]:
    """Run as the app's code does inside a request (what `AppMark` marks)."""
    from connman.testing.binding import _IN_APP

    token = _IN_APP.set(True)
    try:
        yield
    finally:
        _IN_APP.reset(token)


@only(kinds=("sql",))
async def test_request_units_take_turns_through_the_gate(make_manager: Any, ops: Any) -> None:
    """Concurrent units of work of requests in one test run one after the other on the outer
    connection, each through the gate (counted), and all of it is rolled back."""
    import asyncio

    from connman.testing import Isolation

    manager = make_manager()
    await manager.open()
    await _make_table(manager, ops)
    before = manager.stats("main")["requests_num"]
    spans: list[tuple[str, str]] = []
    iso = Isolation(manager).start()

    async def unit(key: str) -> None:
        with inside_app():
            async with manager.session("main") as db:
                spans.append(("in", key))
                await ops.insert(db, key)
                await asyncio.sleep(0.05)
                spans.append(("out", key))

    await asyncio.gather(*(unit(k) for k in "abc"))
    assert [s for s, _ in spans] == ["in", "out"] * 3  # never two inside at once
    async with manager.session("main") as db:
        assert await ops.keys(db) == {"a", "b", "c"}
    assert manager.stats("main")["requests_num"] - before == 4
    await iso.aclose()
    async with manager.session("main") as db:
        assert await ops.keys(db) == set()


@only(kinds=("sql",))
async def test_the_tests_own_units_stack_and_all_commit(make_manager: Any, ops: Any) -> None:
    """Concurrent units the test opens itself (gather in a test body) stack as nested savepoints:
    each waits for the ones above it to end, and every commit is kept."""
    import asyncio

    from connman.testing import Isolation

    manager = make_manager(timeout=10)
    await manager.open()
    await _make_table(manager, ops)
    iso = Isolation(manager).start()

    async def unit(key: str) -> None:
        async with manager.session("main") as db:
            await ops.insert(db, key)
            await asyncio.sleep(0.05)

    await asyncio.gather(*(unit(k) for k in "abc"))
    async with manager.session("main") as db:
        assert await ops.keys(db) == {"a", "b", "c"}
    await iso.aclose()


@only(kinds=("sql",))
async def test_the_tests_open_session_lets_requests_through(make_manager: Any, ops: Any) -> None:
    """Issue 23: a test's own session kept open across requests (a `db_session` fixture, even in
    a transaction) does not block them; each sees what the other committed; all is rolled back."""
    import asyncio

    from connman.testing import Isolation

    manager = make_manager(timeout=2)
    await manager.open()
    await _make_table(manager, ops)
    iso = Isolation(manager).start()

    async def request(key: str | None) -> set[str]:
        with inside_app():
            async with manager.session("main") as db:
                if key is not None:
                    await ops.insert(db, key)
                return set(await ops.keys(db))

    async def fail() -> None:
        with inside_app():
            async with manager.session("main") as db:
                await ops.insert(db, "failed")
                raise ValueError("the handler fails")

    async def fast_path_count() -> int:
        with inside_app():
            async with manager.connection("main"):
                return 1

    async with manager.session("main") as mine:
        await ops.insert(mine, "arranged")
        await mine.commit()
        assert await request(None) == {"arranged"}          # sees the test's committed write
        assert await ops.keys(mine) == {"arranged"}          # in a transaction again: still no block
        assert await request("by-request") == {"arranged", "by-request"}
        with pytest.raises(ValueError, match="the handler fails"):
            await fail()
        assert await ops.keys(mine) == {"arranged", "by-request"}  # sees the request's commit
        assert await fast_path_count() == 1
        async with manager.session("main", readonly=True) as ro:
            assert await ops.keys(ro) == {"arranged", "by-request"}
        # Driven from another task, as a fixture's session used by the test is.
        assert await asyncio.create_task(ops.keys(mine)) == {"arranged", "by-request"}
    await iso.aclose()
    async with manager.session("main") as db:
        assert await ops.keys(db) == set()
    assert manager.stats("main")["requests_active"] == 0


@only(kinds=("sql",))
async def test_a_unit_that_waits_on_another_unit_says_so(make_manager: Any, ops: Any) -> None:
    """A request's unit that waits for another unit of the same test past `timeout` gets a
    PoolTimeout naming the unit it waits for; so does a test's session stuck under a unit."""
    import asyncio

    from connman import PoolTimeout
    from connman.testing import Isolation

    manager = make_manager(timeout=0.5)
    await manager.open()
    iso = Isolation(manager).start()
    held, done = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        with inside_app():
            async with manager.session("main"):
                held.set()
                await done.wait()

    task = asyncio.create_task(holder(), name="slow-request")
    await held.wait()
    with pytest.raises(PoolTimeout, match=r"another unit of work of this test.*slow-request"), \
            inside_app():
        async with manager.session("main"):
            pass
    done.set()
    await task
    async with manager.session("main") as mine:
        await ops.select1(mine)          # in a transaction: its frame stays
        async with manager.session("main") as other:
            await ops.select1(other)     # stacks above `mine`
            with pytest.raises(PoolTimeout, match="still open above it"):
                await ops.select1(mine)
    async with manager.session("main") as db:  # the turn is free again
        await ops.select1(db)
    await iso.aclose()
    assert manager.stats("main")["requests_active"] == 0


@only(kinds=("sql",))
async def test_a_unit_inside_another_nests(make_manager: Any, ops: Any) -> None:
    """In one task, a unit opened inside another runs in a savepoint inside it instead of waiting."""
    from connman.testing import Isolation

    manager = make_manager(timeout=2)
    await manager.open()
    await _make_table(manager, ops)
    iso = Isolation(manager).start()
    async with manager.session("main") as outer:
        await ops.insert(outer, "outer")
        async with manager.session("main") as inner:
            await ops.insert(inner, "inner")
            assert await ops.keys(inner) == {"outer", "inner"}
    async with manager.session("main") as db:
        assert await ops.keys(db) == {"outer", "inner"}
    await iso.aclose()


@only(kinds=("sql",))
async def test_closing_the_pools_rolls_back(make_manager: Any, ops: Any) -> None:
    """A lifespan that ends inside the test rolls the outer transaction back with the pool."""
    from connman.testing import Isolation

    manager = make_manager()
    await manager.open()
    await _make_table(manager, ops)
    iso = Isolation(manager).start()
    async with manager.session("main") as db:
        await ops.insert(db, "gone")
    await manager.close()
    await manager.open()
    async with manager.session("main") as db:
        assert await ops.keys(db) == set()
    await iso.aclose()


@only(kinds=("mongo",))
async def test_mongo_database_per_test_is_dropped(make_manager: Any, ops: Any) -> None:
    from connman.testing import Isolation

    manager = make_manager()
    await manager.open()
    iso = Isolation(manager).start()
    fresh = iso.databases["main"]
    async with manager.session("main") as db:
        assert db.name == fresh
        await ops.insert(db, "k")
    client = manager.native("main")
    assert fresh in await client.list_database_names()
    await iso.aclose()
    assert fresh not in await client.list_database_names()
    async with manager.session("main") as db:
        assert db.name == "connman"


@only(kinds=("sql",), exclude=("mysql-aiomysql", "mysql-asyncmy"))
async def test_point_redirects_an_imported_manager(target: Target, managers: list[Any],
                                                   ops: Any) -> None:
    """Providers made before point() (as `Depends(...)` at import) and on_connect hooks follow."""
    from connman import ConnectionManager
    from connman.testing import point

    bogus = BOGUS[target.driver]
    # Plain routing (no read-your-writes): the readonly unit below goes to the replica.
    manager = ConnectionManager({"main": {"url": bogus, "replicas": [bogus], "timeout": 5,
                                          "read_your_writes": "off"}})
    managers.append(manager)
    provider, reader = manager.session("main"), manager.session("main", readonly=True)
    connected: list[int] = []
    manager.on_connect("main", lambda conn, rec: connected.append(1))
    point(manager, "main", target.url(), size=1)
    assert manager.pool("main").config.size == 1
    assert manager.pool("main.replica1").config.url.get_secret_value() == target.url()
    await manager.open()
    async with provider as db:
        await ops.select1(db)
    async with reader as db:
        await ops.select1(db)
    assert connected
    assert manager.stats("main.replica1")["requests_num"] == 1
    with pytest.raises(RuntimeError, match="open"):
        point(manager, "main", target.url())


XDIST_TESTS = '''
import os

import pytest

from app import manager


@pytest.mark.parametrize("n", range(6))
async def test_each_worker_has_its_own_database(connman_client, n):
    worker = os.environ["PYTEST_XDIST_WORKER"]
    assert manager.pool("main").config.url.get_secret_value().split("?")[0].endswith(worker) or (
        manager.pool("main").config.url.get_secret_value().endswith(f"{worker}.db"))
    assert (await connman_client.post("/items/same-key")).status_code == 201
    assert (await connman_client.get("/items")).json() == ["same-key"]
'''


@only(kinds=("sql",), exclude=("mysql-asyncmy", "mysql-aiomysql"))
def test_xdist_workers_get_databases_of_their_own(pytester: pytest.Pytester,
                                                  target: Target) -> None:
    pytester.makepyfile(app=sql_app(target.driver), conftest=SCHEMA_CONFTEST,
                        test_inner=XDIST_TESTS)
    pytester.makefile(".ini", pytest=ini("session"))
    check(run_inner(pytester, target, "-n", "2"), 6)


STRICT_CONFTEST = SCHEMA_CONFTEST + '''

import pytest_asyncio

from connman.testing import app_client


@pytest_asyncio.fixture
async def client(connman_app, connman_isolation):
    async with app_client(connman_app, connman_isolation) as c:
        yield c
'''


@only(kinds=("sql",), exclude=("mysql-asyncmy", "mysql-aiomysql"))
def test_pytest_asyncio_strict_mode(pytester: pytest.Pytester, target: Target) -> None:
    """In strict mode the app wraps `app_client` in its own `pytest_asyncio.fixture`."""
    tests = SQL_TESTS.replace("connman_client", "client").replace(
        "async def test_", "@pytest.mark.asyncio\nasync def test_")
    pytester.makepyfile(app=sql_app(target.driver), conftest=STRICT_CONFTEST,
                        test_inner="import pytest\n" + tests)
    pytester.makefile(".ini", pytest=ini("function", mode="strict"))
    check(run_inner(pytester, target), 7)


@only(kinds=("sql",))
async def test_bound_units_keep_the_gate_guards(make_manager: Any, ops: Any) -> None:
    """Inside a binding, a session or fast-path connection used after its unit ended refuses
    (SessionEnded) instead of reaching the test's connection past the gate, and the outer
    connection is on the books."""
    from connman import SessionEnded
    from connman.testing import Isolation

    manager = make_manager()
    await manager.open()
    iso = Isolation(manager).start()
    async with manager.session("main") as db:
        await ops.select1(db)
    assert manager.pool("main").off_books() == 0
    with pytest.raises(SessionEnded):
        await ops.select1(db)
    async with manager.connection("main") as conn:
        pass
    with pytest.raises(SessionEnded):
        await conn.execute("SELECT 1")
    await iso.aclose()
    assert manager.pool("main").off_books() == 0


@only(kinds=("sql",))
async def test_isolated_opens_closed_pools_and_rolls_back(make_manager: Any, ops: Any) -> None:
    from connman.testing import isolated

    manager = make_manager()
    await manager.open()
    await _make_table(manager, ops)
    await manager.close()
    async with isolated(manager) as iso:
        assert not manager.pool("main").closed
        async with manager.session("main") as db:
            await ops.insert(db, "k")
        assert iso.bindings["main"].active
    assert manager.pool("main").closed  # it opened them, so it closed them
    await manager.open()
    async with manager.session("main") as db:
        assert await ops.keys(db) == set()


# ------------------------------------------------------------------------------------------------
# Issue 23: real suites — the test's own session, app shapes, refusals, a killed run.

DB_SESSION_CONFTEST = SCHEMA_CONFTEST + '''

from app import manager


@pytest.fixture
async def db(connman_client):
    # The natural way: the test's own unit of work, open for the whole test.
    async with manager.session("main") as session:
        yield session
'''

DB_SESSION_TESTS = '''
from sqlalchemy import select

from app import Item, manager


async def keys(db):
    return list((await db.execute(select(Item.k).order_by(Item.k))).scalars())


async def test_arrange_then_request(connman_client, db):
    db.add(Item(k="arranged"))
    await db.commit()
    assert (await connman_client.get("/items")).json() == ["arranged"]
    assert (await connman_client.post("/items/by-request")).status_code == 201
    assert await keys(db) == ["arranged", "by-request"]
    async with manager.session("main", readonly=True) as ro:
        assert await keys(ro) == ["arranged", "by-request"]
    async with manager.connection("main") as conn:
        __COUNT__
    assert n == 2
    assert (await connman_client.get("/raw")).json() == 2


async def test_a_read_transaction_left_open_does_not_block(connman_client, db):
    assert await keys(db) == []          # the test's session is in a transaction from here on
    assert (await connman_client.post("/items/a")).status_code == 201
    assert (await connman_client.post("/fail/b")).status_code == 500
    assert await keys(db) == ["a"]
    db.add(Item(k="c"))
    await db.flush()                     # not committed: requests still see it (one connection)
    assert (await connman_client.get("/items")).json() == ["a", "c"]


async def test_z_nothing_left(connman_client, db):
    assert await keys(db) == []
    assert (await connman_client.get("/items")).json() == []
'''

MONGO_DB_SESSION_TESTS = '''
from app import manager


async def test_arrange_then_request(connman_client, db):
    await db.items.insert_one({"_id": "arranged"})
    assert (await connman_client.get("/items")).json() == ["arranged"]
    assert (await connman_client.post("/items/b")).status_code == 201
    assert sorted([d["_id"] async for d in db.items.find({})]) == ["arranged", "b"]


async def test_z_nothing_left(connman_client, db):
    assert [d async for d in db.items.find({})] == []
'''


@pytest.mark.parametrize("loop_scope", ["session", "function"])
def test_the_tests_own_session_joins_the_isolation(pytester: pytest.Pytester, target: Target,
                                                    loop_scope: str) -> None:
    """Issue 23: a `db` fixture holding `async with manager.session(...)` for the whole test
    arranges data the requests see, sees what they commit, and everything is rolled back — on
    every backend, with session- and function-scoped loops."""
    if target.is_sql:
        conftest = DB_SESSION_CONFTEST
        tests = DB_SESSION_TESTS.replace("__COUNT__", RAW[target.driver][1])
        pytester.makepyfile(app=sql_app(target.driver), conftest=conftest, test_inner=tests)
        passed = 3
    else:
        conftest = MONGO_CONFTEST + DB_SESSION_CONFTEST.split(SCHEMA_CONFTEST, 1)[1]
        conftest = "import pytest\n" + conftest
        pytester.makepyfile(app=mongo_app(target.driver), conftest=conftest,
                            test_inner=MONGO_DB_SESSION_TESTS)
        passed = 2
    pytester.makefile(".ini", pytest=ini(loop_scope))
    check(run_inner(pytester, target), passed)


SHAPES_APP = '''
import asyncio
import contextlib

from fastapi import APIRouter, Depends, FastAPI
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from sqlalchemy import String, func, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from connman import ConnectionManager

EVENTS = []


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    k: Mapped[str] = mapped_column(String(40), primary_key=True)


def migrate(pool, url):
    # As an Alembic env.py does: its own engine, its own event loop (asyncio.run).
    async def upgrade():
        engine = create_async_engine(url)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        await engine.dispose()

    asyncio.run(upgrade())
    EVENTS.append(("migrated", pool))


def create_app():
    # No pool settings in the environment (a CI runner): the pools are read at open().
    manager = ConnectionManager.from_settings()

    @contextlib.asynccontextmanager
    async def own(app):
        EVENTS.append("app startup")
        yield {"ready": True}

    app = FastAPI(lifespan=manager.wrap_lifespan(own, app_first=True))
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=["api.example"])
    api = APIRouter(prefix="/api")

    @api.post("/items/{k}", status_code=201)
    async def add(k: str, db: AsyncSession = Depends(manager.session("main"))):
        db.add(Item(k=k))

    @api.get("/items")
    async def items(db: AsyncSession = Depends(manager.session("main", readonly=True))):
        return list((await db.execute(select(Item.k).order_by(Item.k))).scalars())

    @api.get("/count")
    async def count():
        async with manager.session("main") as db:
            return (await db.execute(select(func.count()).select_from(Item))).scalar_one()

    app.include_router(api)
    return app
'''

SHAPES_TESTS = '''
import asyncio

import pytest

from connman import ConnectionManager, PoolNotOpen
from connman.testing import sql_pool

import app as app_module


async def test_factory_prefix_host_migrations(connman_client, connman_manager):
    assert (await connman_client.post("/items/a")).status_code == 201
    assert (await connman_client.get("/items")).json() == ["a"]
    assert [e for e in app_module.EVENTS if e[0] == "migrated"] == [("migrated", "main")]
    assert "app startup" in app_module.EVENTS
    assert sql_pool(connman_manager, "main").binding is not None


async def test_starts_empty_and_awaiting_every_task_returns(connman_client):
    assert (await connman_client.get("/count")).json() == 0
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not [t for t in others if "connman" in t.get_name()], others
    await asyncio.wait_for(asyncio.gather(*others), 30)


async def test_a_second_manager_is_told_apart(connman_client):
    mine = ConnectionManager({"main": {"url": "sqlite+aiosqlite:///other.db"}})
    with pytest.raises(PoolNotOpen, match="test plugin") as err:
        async with mine.session("main"):
            pass
    assert "lifespan did not run" not in str(err.value)
'''


@only(kinds=("sql",), exclude=("mysql-asyncmy", "mysql-aiomysql"))
@pytest.mark.parametrize("loop_scope", ["session", "function"])
def test_app_shapes(pytester: pytest.Pytester, target: Target, loop_scope: str) -> None:
    """A factory (`module:create_app()`) whose manager lives only in its wrapped lifespan,
    `from_settings()` with no settings (the driver named by `connman_drivers`), a host
    TrustedHostMiddleware accepts and an `/api` prefix (`connman_base_url`), a migrations hook
    run once, `wrap_lifespan(app_first=True)`, no connman task in the way of `all_tasks()`, and a
    second manager's PoolNotOpen that does not blame the lifespan."""
    pytester.makepyfile(app=SHAPES_APP, conftest=MONGO_CONFTEST, test_inner=SHAPES_TESTS)
    extra = (f"connman_drivers = main={target.driver}\n"
             "        connman_base_url = http://api.example/api\n"
             "        connman_migrate = app:migrate")
    text = ini(loop_scope, extra=extra).replace("connman_app = app:app",
                                                "connman_app = app:create_app()")
    pytester.makefile(".ini", pytest=text)
    check(run_inner(pytester, target), 3)


@only(kinds=("sql",), exclude=("mysql-asyncmy", "mysql-aiomysql", "sqlite"))
def test_without_a_driver_the_error_names_the_setting(pytester: pytest.Pytester,
                                                      target: Target) -> None:
    pytester.makepyfile(app=SHAPES_APP, conftest=MONGO_CONFTEST, test_inner=SHAPES_TESTS)
    pytester.makefile(".ini", pytest=ini("session").replace("connman_app = app:app",
                                                            "connman_app = app:create_app()"))
    result = run_inner(pytester, target)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*connman_drivers = main=asyncpg*"])


@only(kinds=("sql",), exclude=("mysql-asyncmy", "mysql-aiomysql", "sqlite"))
def test_autocommit_is_refused_at_setup(pytester: pytest.Pytester, target: Target) -> None:
    app = sql_app(target.driver).replace('"timeout": 5,', '"timeout": 5, "options": '
                                         '{"isolation_level": "AUTOCOMMIT"},')
    pytester.makepyfile(app=app, conftest=SCHEMA_CONFTEST, test_inner=SQL_TESTS)
    pytester.makefile(".ini", pytest=ini("session"))
    result = run_inner(pytester, target)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*pool 'main' sets options={'isolation_level': 'AUTOCOMMIT'}*"])


@only(kinds=("sql",), exclude=("postgres", "postgres-psycopg", "sqlite"))
async def test_ddl_on_mariadb_inside_a_test_names_the_cause(make_manager: Any, ops: Any) -> None:
    from connman.testing import Isolation
    from connman.testing.binding import IsolationBroken

    manager = make_manager()
    await manager.open()
    iso = Isolation(manager).start()
    with pytest.raises(IsolationBroken, match=r"pool 'main'.*commits the test's transaction"):
        async with manager.session("main") as db:
            await ops.create(db)
    async with manager.session("main") as db:  # a TEMPORARY table commits nothing: allowed
        from sqlalchemy import text

        await db.execute(text("CREATE TEMPORARY TABLE t_tmp (k INT)"))
    await iso.aclose()


KILLED_TESTS = '''
import os
import time


def test_hangs(connman_postgres, connman_mongo):
    pids = [connman_postgres._proc.pid, connman_mongo._proc.pid]
    with open(os.environ["PIDS_FILE"], "w") as f:
        f.write(" ".join(map(str, pids)))
    time.sleep(600)
'''


def test_servers_die_with_a_killed_run(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """Issue 23: SIGKILL the pytest process (a CI timeout): its throwaway servers die too."""
    import signal
    import time

    from connman.testing.servers import _alive

    pids_file = tmp_path / "pids"
    pytester.makepyfile(conftest=MONGO_CONFTEST, test_inner=KILLED_TESTS)
    env = server_env(None)
    env["PIDS_FILE"] = str(pids_file)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "-s", str(pytester.path)], cwd=pytester.path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (pids_file.exists() and pids_file.read_text().strip()):
            assert proc.poll() is None, "the inner run ended before its servers started"
            assert time.monotonic() < deadline, "servers never started"
            time.sleep(0.05)
        pids = [int(p) for p in pids_file.read_text().split()]
        assert all(_alive(p) for p in pids)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 60
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)]


ONCE_TESTS = '''
import pytest

from app import manager

ENGINES = []


@pytest.mark.parametrize("k", ["a", "b", "c"])
async def test_each_starts_empty(connman_client, k):
    ENGINES.append(manager.pool("main")._engine)
    assert (await connman_client.get("/items")).json() == []
    assert (await connman_client.post(f"/items/{k}")).status_code == 201


def test_one_engine_for_the_session():
    assert len(ENGINES) == 3
    assert len(set(map(id, ENGINES))) == (1 if ONCE else 3)


def test_a_sync_test_client_between(connman_test_client):
    assert connman_test_client.post("/items/s").status_code == 201
    assert connman_test_client.get("/items").json() == ["s"]


async def test_async_again(connman_client):
    assert (await connman_client.get("/items")).json() == []
'''


@only(kinds=("sql",), exclude=("mysql-asyncmy", "mysql-aiomysql"))
@pytest.mark.parametrize("loop_scope", ["session", "function"])
def test_pools_open_once_with_a_session_loop(pytester: pytest.Pytester, target: Target,
                                             loop_scope: str) -> None:
    """Issue 23 (cost): with a session-scoped loop the app's lifespan and pools open once for the
    session, each test still isolated; with function-scoped loops, once per test."""
    pytester.makepyfile(app=sql_app(target.driver), conftest=SCHEMA_CONFTEST,
                        test_inner=ONCE_TESTS.replace("ONCE", str(loop_scope == "session")))
    pytester.makefile(".ini", pytest=ini(loop_scope))
    check(run_inner(pytester, target), 6)


@only(kinds=("sql",), exclude=("mysql-asyncmy", "mysql-aiomysql"))
async def test_async_with_ended_in_another_task(make_manager: Any, ops: Any) -> None:
    """An async-generator fixture holding `async with manager.session(...)` has its setup and its
    teardown run in two tasks under pytest-asyncio < 1.0: the exit still ends that unit."""
    import asyncio

    manager = make_manager()
    await manager.open()
    provider = manager.session("main")
    db = await asyncio.create_task(provider.__aenter__())
    await ops.select1(db)
    await asyncio.create_task(provider.__aexit__(None, None, None))
    assert manager.stats("main")["requests_active"] == 0


@only(kinds=("sql",), exclude=("mysql-asyncmy", "mysql-aiomysql"))
def test_the_tests_own_session_under_anyio(pytester: pytest.Pytester, target: Target) -> None:
    """The same `db` fixture under anyio's pytest plugin (pytest-asyncio strict beside it)."""
    tests = DB_SESSION_TESTS.replace("__COUNT__", RAW[target.driver][1]).replace(
        "async def test_", "@pytest.mark.anyio\nasync def test_")
    tests = "import pytest\n\n\n@pytest.fixture\ndef anyio_backend():\n    return 'asyncio'\n" + tests
    pytester.makepyfile(app=sql_app(target.driver), conftest=DB_SESSION_CONFTEST,
                        test_inner=tests)
    pytester.makefile(".ini", pytest=ini("function", mode="strict"))
    check(run_inner(pytester, target), 3)


SHARED_TESTS = '''
import os
from pathlib import Path

import pytest

from connman.testing import ExternalServer


@pytest.mark.parametrize("n", range(4))
async def test_workers_share_one_server(connman_client, connman_postgres, n):
    assert isinstance(connman_postgres, ExternalServer)  # the controller's, not the worker's own
    worker = os.environ["PYTEST_XDIST_WORKER"]
    (Path(os.environ["PORTS_DIR"]) / worker).write_text(str(connman_postgres.port))
    assert (await connman_client.post("/items/same-key")).status_code == 201
    assert (await connman_client.get("/items")).json() == ["same-key"]
'''


def test_xdist_workers_share_the_controllers_server(pytester: pytest.Pytester,
                                                    tmp_path: Path) -> None:
    """Issue 23 (cost): under xdist the controller starts one PostgreSQL for all its workers;
    each worker still has a database of its own."""
    ports = tmp_path / "ports"
    ports.mkdir()
    pytester.makepyfile(app=sql_app("asyncpg"), conftest=SCHEMA_CONFTEST, test_inner=SHARED_TESTS)
    pytester.makefile(".ini", pytest=ini("session"))
    os.environ["PORTS_DIR"] = str(ports)
    try:
        result = run_inner(pytester, None, "-n", "2", "--dist", "each")  # both workers run
    finally:
        del os.environ["PORTS_DIR"]
    check(result, 8)
    seen = {p.name: p.read_text() for p in ports.iterdir()}
    assert len(seen) == 2, seen
    assert len(set(seen.values())) == 1, seen
