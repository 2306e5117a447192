"""What the suite benchmarks and where: backends, pool settings, targets, and their test data."""

from __future__ import annotations

import contextlib
import importlib.metadata
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

__all__ = ["BACKENDS", "QUICK_BACKENDS", "ROWS", "TABLE", "Backend", "PoolSettings", "Target",
           "prepare", "server_version"]

TABLE = "connman_bench"
"""The table (SQL) or collection (Mongo) the point reads and writes use."""
ROWS = 1000
"""Rows pre-filled in `TABLE`: keys 1..ROWS, value 0."""


@dataclass(frozen=True)
class Backend:
    """One benchmarked backend: a driver family, a driver and the server kind it needs."""

    name: str
    family: str  # "sql" or "mongo"
    driver: str
    server: str  # "postgres", "pgbouncer", "mysql", "mongo", or "" (SQLite: a file)


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("postgres-asyncpg", "sql", "asyncpg", "postgres"),
    Backend("postgres-psycopg", "sql", "psycopg", "postgres"),
    Backend("pgbouncer-asyncpg", "sql", "asyncpg", "pgbouncer"),
    Backend("mysql-aiomysql", "sql", "aiomysql", "mysql"),
    Backend("mysql-asyncmy", "sql", "asyncmy", "mysql"),
    Backend("sqlite-aiosqlite", "sql", "aiosqlite", ""),
    Backend("mongo-pymongo", "mongo", "pymongo", "mongo"),
    Backend("mongo-motor", "mongo", "motor", "mongo"),
)}
"""Every backend the suite knows, by name."""
QUICK_BACKENDS = ("sqlite-aiosqlite", "postgres-asyncpg", "mongo-pymongo")
"""The backends `--quick` runs when none are named."""


@dataclass(frozen=True)
class PoolSettings:
    """The pool settings every variant of a backend gets: connman's fields, mirrored natively."""

    size: int = 10
    overflow: int = 10
    timeout: float = 30.0
    recycle: float = 1800.0
    idle: float = 600.0
    pre_ping: bool = True
    connect_timeout: float = 10.0
    max_waiting: int = 0

    @property
    def max_size(self) -> int:
        """size + overflow: the most connections one variant opens."""
        return self.size + self.overflow


@dataclass(frozen=True)
class Target:
    """Where one backend's variants connect: a SQLAlchemy-style or mongodb:// URL."""

    backend: Backend
    url: str
    database: str = "connman_bench"

    def pool_config(self, s: PoolSettings) -> dict[str, Any]:
        """The connman pool config for settings `s`."""
        cfg: dict[str, Any] = {
            "url": self.url, "size": s.size, "overflow": s.overflow, "timeout": s.timeout,
            "recycle": s.recycle, "idle": s.idle, "pre_ping": s.pre_ping,
            "connect_timeout": s.connect_timeout, "max_waiting": s.max_waiting,
        }
        if self.backend.family == "mongo":
            cfg.update(driver=self.backend.driver, database=self.database)
        if self.backend.server == "pgbouncer":
            cfg["external_pooler"] = "pgbouncer"
        return cfg

    def mongo_options(self, s: PoolSettings) -> dict[str, Any]:
        """PyMongo client keywords equal to what connman maps `s` to (no listeners, no appname)."""
        return {"minPoolSize": s.size, "maxPoolSize": s.max_size,
                "waitQueueTimeoutMS": int(s.timeout * 1000),
                "connectTimeoutMS": int(s.connect_timeout * 1000),
                "serverSelectionTimeoutMS": int(s.connect_timeout * 1000),
                "maxIdleTimeMS": int(s.idle * 1000)}


async def prepare(target: Target) -> None:
    """(Re)create `TABLE` with keys 1..ROWS and value 0 (SQLite: in WAL mode)."""
    if target.backend.family == "mongo":
        from pymongo import AsyncMongoClient

        client: Any = AsyncMongoClient(target.url, serverSelectionTimeoutMS=10_000)
        try:
            coll = client[target.database][TABLE]
            await coll.drop()
            await coll.insert_many([{"_id": k, "v": 0} for k in range(1, ROWS + 1)])
        finally:
            await client.close()
        return
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    connect_args: dict[str, Any] = {}
    if target.backend.server == "pgbouncer":
        connect_args = {"statement_cache_size": 0, "prepared_statement_cache_size": 0}
    engine = create_async_engine(target.url, poolclass=NullPool, connect_args=connect_args)
    try:
        if target.backend.driver == "aiosqlite":
            async with engine.connect() as conn:
                await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f"DROP TABLE IF EXISTS {TABLE}")
            await conn.exec_driver_sql(
                f"CREATE TABLE {TABLE} (k INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
            await conn.execute(text(f"INSERT INTO {TABLE} (k, v) VALUES (:k, 0)"),
                               [{"k": k} for k in range(1, ROWS + 1)])
    finally:
        await engine.dispose()


async def server_version(target: Target) -> str:
    """The server's own version string (PgBouncer: its binary's; Mongo: SecantusDB's too)."""
    backend = target.backend
    if backend.family == "mongo":
        from pymongo import AsyncMongoClient

        client: Any = AsyncMongoClient(target.url, serverSelectionTimeoutMS=10_000)
        try:
            info = await client.admin.command("buildInfo")
        finally:
            await client.close()
        try:
            secantus = importlib.metadata.version("secantusdb")
        except importlib.metadata.PackageNotFoundError:
            secantus = "?"
        return (f"wire version {info.get('version')} (SecantusDB {secantus}, a MongoDB-wire "
                "surrogate, not mongod)")
    if backend.server == "pgbouncer":
        return _pgbouncer_version()
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    query = {"asyncpg": "SELECT version()", "psycopg": "SELECT version()",
             "aiosqlite": "SELECT 'SQLite ' || sqlite_version()",
             }.get(backend.driver, "SELECT CONCAT('MySQL-protocol ', VERSION())")
    engine = create_async_engine(target.url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return str((await conn.exec_driver_sql(query)).scalar())
    finally:
        await engine.dispose()


def _pgbouncer_version() -> str:
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10,
                              check=False)
        lines = done.stdout.strip().splitlines()
        if lines:
            return lines[0]
    return "PgBouncer (version unknown)"
