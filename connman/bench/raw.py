"""The floor: each driver's own pool (asyncpg, psycopg_pool, aiomysql, asyncmy), one aiosqlite
connection, and the PyMongo/Motor client used directly.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

from .targets import TABLE, PoolSettings, Target
from .variants import DRIVER_OPS, ConnmanVariant, FastVariant, HandMongo, HandSql, Variant, driver_sql, perf

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["RawAiosqlite", "RawAsyncpg", "RawMongo", "RawMySQL", "RawPsycopg", "RawSql"]


class RawMongo(HandMongo):
    """The client directly: a collection object taken once, no dependency."""

    name = "raw"

    async def open(self) -> None:
        """Create the client and take the collection once."""
        await super().open()
        self.coll = self.client[self.target.database][TABLE]

    async def checkout(self, k: int) -> None:
        """Take the database handle from the client (no I/O)."""
        _ = self.client[self.target.database]

    async def read(self, k: int) -> None:
        """find_one by _id."""
        await self.coll.find_one({"_id": k})

    async def write(self, k: int) -> None:
        """update_one by _id ($inc)."""
        await self.coll.update_one({"_id": k}, {"$inc": {"v": 1}})

    def add_route(self, app: FastAPI) -> None:
        """A handler that uses the collection directly."""

        @app.get(f"/{self.name}/{{k}}")
        async def endpoint(k: int) -> dict[str, Any]:
            doc = await self.coll.find_one({"_id": k})
            return {"v": doc["v"] if doc else None}


class RawSql(Variant):
    """The driver's own pool; subclasses say how to make it and take a connection from it."""

    name = "raw"

    def __init__(self, target: Target, settings: PoolSettings) -> None:
        super().__init__(target, settings)
        self.pool: Any = None
        self._read_sql, self._write_sql = driver_sql(target.backend.driver)
        self._read_op, self._write_op = DRIVER_OPS[target.backend.driver]

    @abc.abstractmethod
    def acquire(self, timeout: float | None = None) -> AbstractAsyncContextManager[Any]:
        """A driver connection from the pool, waiting at most `timeout` seconds."""

    def opened(self) -> int | None:
        """Connections the pool has opened so far (None: the pool cannot tell)."""
        return None

    async def checkout(self, k: int) -> None:
        """Acquire and release."""
        async with self.acquire():
            pass

    async def read(self, k: int) -> None:
        """Point read with the driver's API."""
        async with self.acquire() as conn:
            await self._read_op(conn, self._read_sql, k)

    async def write(self, k: int) -> None:
        """Point write in a driver-level transaction."""
        async with self.acquire() as conn:
            await self._write_op(conn, self._write_sql, k)

    async def hold(self, seconds: float) -> float:
        """Hold a connection `seconds`, waiting at most the pool timeout for it."""
        t0 = perf()
        async with self.acquire(self.settings.timeout):
            waited = perf() - t0
            await asyncio.sleep(seconds)
        return waited

    def add_route(self, app: FastAPI) -> None:
        """A handler that acquires from the driver pool itself."""

        @app.get(f"/{self.name}/{{k}}")
        async def endpoint(k: int) -> dict[str, Any]:
            await self.read(k)
            return {"v": 0}


class _CountingPool(RawSql):
    """A driver pool with a per-connection hook (asyncpg's `init`, psycopg_pool's `configure`)
    that counts the connections it opens; closed with `await pool.close()`."""

    _opened = 0

    async def _count(self, conn: Any) -> None:
        # The pool calls its hook once for every connection it opens.
        self._opened += 1

    def opened(self) -> int:
        """Connections the pool has opened so far (its hook's calls)."""
        return self._opened

    async def close(self) -> None:
        """Close the pool."""
        if self.pool is not None:
            await self.pool.close()


class RawAsyncpg(_CountingPool):
    """`asyncpg.create_pool` (statement cache off behind PgBouncer, as connman does)."""

    async def open(self) -> None:
        """Create the pool with min_size=size, max_size=size+overflow."""
        import asyncpg

        s = self.settings
        kw: dict[str, Any] = {}
        if self.target.backend.server == "pgbouncer":
            kw["statement_cache_size"] = 0
        dsn = self.target.url.replace("postgresql+asyncpg://", "postgresql://", 1)
        self._opened = 0
        self.pool = await asyncpg.create_pool(
            dsn, min_size=s.size, max_size=s.max_size, timeout=s.connect_timeout,
            max_inactive_connection_lifetime=s.idle, init=self._count, **kw)

    def acquire(self, timeout: float | None = None) -> AbstractAsyncContextManager[Any]:
        """`pool.acquire(timeout=...)`."""
        cm: AbstractAsyncContextManager[Any] = self.pool.acquire(timeout=timeout)
        return cm


class RawPsycopg(_CountingPool):
    """psycopg_pool's `AsyncConnectionPool`, psycopg's own pool: connections in autocommit (as
    its users configure them for point queries; writes run in `conn.transaction()`), no
    prepared statements behind PgBouncer, as connman does."""

    async def open(self) -> None:
        """Create and open the pool with min_size=size, max_size=size+overflow."""
        from psycopg_pool import AsyncConnectionPool

        s = self.settings
        kwargs: dict[str, Any] = {"autocommit": True}
        if self.target.backend.server == "pgbouncer":
            kwargs["prepare_threshold"] = None
        conninfo = self.target.url.replace("postgresql+psycopg://", "postgresql://", 1)
        self._opened = 0
        self.pool = AsyncConnectionPool(
            conninfo, min_size=s.size, max_size=s.max_size, timeout=s.timeout,
            max_idle=s.idle, max_lifetime=s.recycle, kwargs=kwargs, configure=self._count,
            open=False)
        await self.pool.open(wait=True, timeout=s.connect_timeout)

    def acquire(self, timeout: float | None = None) -> AbstractAsyncContextManager[Any]:
        """`pool.connection(timeout=...)`."""
        cm: AbstractAsyncContextManager[Any] = self.pool.connection(timeout=timeout)
        return cm


class RawMySQL(RawSql):
    """`aiomysql.create_pool` / `asyncmy.create_pool` (autocommit; writes BEGIN/COMMIT)."""

    async def open(self) -> None:
        """Create the pool with minsize=size, maxsize=size+overflow."""
        s = self.settings
        url = make_url(self.target.url)
        kw: dict[str, Any] = {"host": url.host, "port": url.port or 3306,
                              "user": url.username or "root", "password": url.password or "",
                              "minsize": s.size, "maxsize": s.max_size,
                              "pool_recycle": int(s.recycle), "autocommit": True,
                              "connect_timeout": s.connect_timeout}
        if self.target.backend.driver == "asyncmy":
            import asyncmy

            self.pool = await asyncmy.create_pool(database=url.database, **kw)
        else:
            import aiomysql

            self.pool = await aiomysql.create_pool(db=url.database, **kw)

    async def close(self) -> None:
        """Close the pool and wait for it."""
        if self.pool is not None:
            self.pool.close()
            await self.pool.wait_closed()

    def opened(self) -> int:
        """Connections open in the pool now (it has no connect hook, and closes none it keeps)."""
        return int(self.pool.size)

    @asynccontextmanager
    async def acquire(self, timeout: float | None = None) -> AsyncIterator[Any]:
        """`pool.acquire()` (bounded by `asyncio.timeout`, the pool has no timeout of its own)."""
        if timeout is None:
            conn = await self.pool.acquire()
        else:
            async with asyncio.timeout(timeout):
                conn = await self.pool.acquire()
        try:
            yield conn
        finally:
            released = self.pool.release(conn)
            if released is not None:
                await released


class RawAiosqlite(RawSql):
    """One aiosqlite connection (SQLite has no driver pool), used by one task at a time."""

    async def open(self) -> None:
        """Open the connection."""
        import aiosqlite

        path = make_url(self.target.url).database or ""
        self.conn = await aiosqlite.connect(path)
        self.lock = asyncio.Lock()

    async def close(self) -> None:
        """Close the connection."""
        await self.conn.close()

    def opened(self) -> int:
        """One connection, opened at start."""
        return 0

    @asynccontextmanager
    async def acquire(self, timeout: float | None = None) -> AsyncIterator[Any]:
        """The connection, under a lock (a pool of one)."""
        async with asyncio.timeout(timeout):
            await self.lock.acquire()
        try:
            yield self.conn
        finally:
            self.lock.release()


def raw_variant(target: Target, settings: PoolSettings) -> Variant:
    """The driver's own pool (or client) for `target`, not opened yet."""
    if target.backend.family == "mongo":
        return RawMongo(target, settings)
    if target.backend.driver == "asyncpg":
        return RawAsyncpg(target, settings)
    if target.backend.driver == "psycopg":
        return RawPsycopg(target, settings)
    if target.backend.driver == "aiosqlite":
        return RawAiosqlite(target, settings)
    return RawMySQL(target, settings)


def make_variants(target: Target, settings: PoolSettings) -> list[Variant]:
    """connman, hand, raw and fast for one target, not opened yet (fast shares connman's pool)."""
    connman = ConnmanVariant(target, settings)
    hand: Variant = (HandMongo(target, settings) if target.backend.family == "mongo"
                     else HandSql(target, settings))
    return [connman, hand, raw_variant(target, settings), FastVariant(connman)]
