"""Throwaway servers for an app's test suite, and a database of its own per pool and per worker.

`TestServers` starts each kind of server once per test session (or uses `CONNMAN_TEST_<KIND>_URL`)
and maps a pool's configuration to a URL on it: PostgreSQL and MariaDB get a fresh database per
pool (and per `pytest-xdist` worker), SQLite a file in a temp dir, Mongo a database name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..config import PoolConfig
from .isolation import close_mongo_clients, run_in_thread
from .servers import MariaDBServer, MongoWireServer, PostgresServer, Server, ServerError, server_from_env

__all__ = ["KIND_OF_DRIVER", "TestServers", "create_schema", "worker_id"]

KIND_OF_DRIVER = {"asyncpg": "postgres", "psycopg": "postgres", "aiomysql": "mysql", "asyncmy": "mysql",
                  "aiosqlite": "sqlite", "pymongo": "mongo", "motor": "mongo"}
"""Which test server a pool's driver runs against."""

_FACTORIES = {"postgres": PostgresServer, "mysql": MariaDBServer, "mongo": MongoWireServer}


def worker_id() -> str:
    """The `pytest-xdist` worker running this process (`gw0`, ...), or "" without xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER", "")


def _identifier(text: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", text.lower())[:48]


class TestServers:
    """The servers of one test session, started on first use, stopped by `stop()`."""

    __test__ = False  # not a pytest test class

    def __init__(self, tmpdir: Path, *, worker: str | None = None) -> None:
        self.tmpdir = tmpdir
        self.worker = worker_id() if worker is None else worker
        self._servers: dict[str, Server] = {}
        self._failed: dict[str, str] = {}
        self._started: list[Server] = []
        self._created: list[tuple[str, str, str]] = []  # (kind, admin URL, database) on external servers

    def server(self, kind: str) -> Server:
        """The `postgres`, `mysql` or `mongo` server: `CONNMAN_TEST_<KIND>_URL`, else a throwaway one.

        Raises `ServerError` when it cannot start (again at every call, without retrying).
        """
        if kind in self._failed:
            raise ServerError(self._failed[kind])
        server = self._servers.get(kind)
        if server is None:
            server = server_from_env(kind)
            if server is None:
                try:
                    server = _FACTORIES[kind]().start()
                except ServerError as exc:
                    self._failed[kind] = str(exc)
                    raise
                self._started.append(server)
            self._servers[kind] = server
        return server

    def database_name(self, pool: str) -> str:
        """The test database of pool `pool` in this worker: `connman_<pool>[_<worker>]`."""
        suffix = f"_{self.worker}" if self.worker else ""
        return _identifier(f"connman_{pool}{suffix}")

    def url_for(self, pool: str, config: PoolConfig | str) -> str:
        """A URL for pool `pool` on the test server of its driver (a `PoolConfig`, or a driver name:
        asyncpg, psycopg, aiomysql, asyncmy, aiosqlite, pymongo, motor), its database freshly created."""
        driver = config if isinstance(config, str) else config.driver_name
        kind = KIND_OF_DRIVER[driver]
        database = self.database_name(pool)
        if kind == "sqlite":
            path = self.tmpdir / f"{database}.db"
            path.unlink(missing_ok=True)
            return f"sqlite+aiosqlite:///{path}"
        server = self.server(kind)
        if kind == "mongo":
            return server.url(database=database)
        admin = server.url(driver=driver)
        run_in_thread(_recreate_database(admin, database, kind))
        if server not in self._started:
            self._created.append((kind, admin, database))
        return server.url(driver=driver, database=database)

    def stop(self) -> None:
        """Drop the databases made on external servers, stop the throwaway servers."""
        try:
            for kind, admin, database in self._created:
                run_in_thread(_drop_database(admin, database, kind))
        finally:
            self._created.clear()
            close_mongo_clients()
            for server in reversed(self._started):
                server.stop()
            self._started.clear()
            self._servers.clear()


def _quote(kind: str, name: str) -> str:
    return f"`{name}`" if kind == "mysql" else f'"{name}"'


async def _admin(url: str, database: str, kind: str, *, create: bool) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    name = _quote(kind, database)
    engine = create_async_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            if kind == "postgres":
                await conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            elif (await conn.exec_driver_sql(
                    "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                    (database,))).scalar():
                # Not DROP ... IF EXISTS: MySQL drivers turn its note into a Python warning.
                await conn.exec_driver_sql(f"DROP DATABASE {name}")
            if create:
                await conn.exec_driver_sql(f"CREATE DATABASE {name}")
    finally:
        await engine.dispose()


async def _recreate_database(admin: str, database: str, kind: str) -> None:
    await _admin(admin, database, kind, create=True)


async def _drop_database(admin: str, database: str, kind: str) -> None:
    await _admin(admin, database, kind, create=False)


def _metadata_of(schema: Any) -> Any:
    return getattr(schema, "metadata", schema)  # a DeclarativeBase class, or a MetaData


def create_schema(url: str, schema: Any) -> None:
    """Create the tables of `schema` (a `MetaData` or declarative base, or a list) at `url`.

    Runs in a thread of its own with a throwaway engine, so it works from any fixture.
    """
    items = schema if isinstance(schema, (list, tuple)) else [schema]

    async def create() -> None:
        from sqlalchemy.ext.asyncio import create_async_engine
        from sqlalchemy.pool import NullPool

        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                for item in items:
                    await conn.run_sync(_metadata_of(item).create_all)
        finally:
            await engine.dispose()

    run_in_thread(create())
