"""The ways to reach one backend that the suite measures side by side, with the same pool settings.

- `connman`: `manager.session(name)` (SQL: an `AsyncSession`; Mongo: the database handle).
- `hand`: the usual hand-written pattern: `create_async_engine` + `async_sessionmaker` + a `get_db`
  async generator that commits or rolls back (Mongo: a bare client and `client[db]`).
- `raw`: the driver's own pool, the floor (asyncpg/aiomysql/asyncmy pools, psycopg_pool's
  `AsyncConnectionPool`, one aiosqlite connection, the PyMongo or Motor client directly).
- `fast`: connman's fast path, `manager.connection(name)`, driving the driver's own API.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from connman import ConnectionManager

from .targets import TABLE, PoolSettings, Target

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["VARIANTS", "ConnmanVariant", "HandSql", "Variant", "with_max_waiting"]

VARIANTS = ("connman", "hand", "raw", "fast")
"""The variant names, in the order a repetition runs them (rotated each repetition)."""
perf = time.perf_counter


class Variant(abc.ABC):
    """One way to run the scenarios' operations on one backend."""

    name = ""

    def __init__(self, target: Target, settings: PoolSettings) -> None:
        self.target = target
        self.settings = settings

    async def open(self) -> None:
        """Create the pool or client and warm `size` connections."""
        return None

    async def close(self) -> None:
        """Dispose the pool or client."""
        return None

    @abc.abstractmethod
    async def checkout(self, k: int) -> None:
        """Check a connection out and give it back (Mongo: get the handle; no I/O)."""

    @abc.abstractmethod
    async def read(self, k: int) -> None:
        """Point read of key `k`."""

    @abc.abstractmethod
    async def write(self, k: int) -> None:
        """Increment the row of key `k` in its own transaction, committed."""

    @abc.abstractmethod
    async def hold(self, seconds: float) -> float:
        """Hold one connection `seconds`; return how long it took to get it (s)."""

    @abc.abstractmethod
    def add_route(self, app: FastAPI) -> None:
        """Register `GET /<name>/{k}` on a FastAPI app: a point read through this variant."""

    def op(self, scenario: str) -> Callable[[int], Awaitable[None]]:
        """The bound operation for a scenario name (checkout, read, write)."""
        fn: Callable[[int], Awaitable[None]] = getattr(self, scenario)
        return fn


# ---------------------------------------------------------------------------- SQL helpers
_PARAM = {"asyncpg": "$1", "psycopg": "%s", "aiomysql": "%s", "asyncmy": "%s", "aiosqlite": "?"}
SA_READ = text(f"SELECT v FROM {TABLE} WHERE k = :k")
SA_WRITE = text(f"UPDATE {TABLE} SET v = v + 1 WHERE k = :k")


def driver_sql(driver: str) -> tuple[str, str]:
    """(point read, point write) in the driver's own parameter style."""
    p = _PARAM[driver]
    return f"SELECT v FROM {TABLE} WHERE k = {p}", f"UPDATE {TABLE} SET v = v + 1 WHERE k = {p}"


DriverOp = Callable[[Any, str, int], Awaitable[None]]


async def _pg_read(conn: Any, sql: str, k: int) -> None:
    await conn.fetchval(sql, k)


async def _pg_write(conn: Any, sql: str, k: int) -> None:
    async with conn.transaction():
        await conn.execute(sql, k)


async def _psycopg_read(conn: Any, sql: str, k: int) -> None:
    cur = await conn.execute(sql, (k,))
    await cur.fetchone()


async def _psycopg_write(conn: Any, sql: str, k: int) -> None:
    async with conn.transaction():
        await conn.execute(sql, (k,))


async def _my_read(conn: Any, sql: str, k: int) -> None:
    async with conn.cursor() as cur:
        await cur.execute(sql, (k,))
        await cur.fetchone()


async def _my_write(conn: Any, sql: str, k: int) -> None:
    await conn.begin()
    async with conn.cursor() as cur:
        await cur.execute(sql, (k,))
    await conn.commit()


async def _lite_read(conn: Any, sql: str, k: int) -> None:
    async with conn.execute(sql, (k,)) as cur:
        await cur.fetchone()


async def _lite_write(conn: Any, sql: str, k: int) -> None:
    await conn.execute(sql, (k,))
    await conn.commit()


DRIVER_OPS: dict[str, tuple[DriverOp, DriverOp]] = {
    "asyncpg": (_pg_read, _pg_write),
    "psycopg": (_psycopg_read, _psycopg_write),
    "aiomysql": (_my_read, _my_write),
    "asyncmy": (_my_read, _my_write),
    "aiosqlite": (_lite_read, _lite_write),
}
"""(read, write) on a driver connection, per driver: what `raw` and `fast` run."""


# ---------------------------------------------------------------------------- connman
class ConnmanVariant(Variant):
    """`manager.session("main")` on a manager with one pool."""

    name = "connman"

    def __init__(self, target: Target, settings: PoolSettings, name: str = "connman") -> None:
        super().__init__(target, settings)
        self.name = name
        self.manager = ConnectionManager({"main": target.pool_config(settings)})
        self.provider = self.manager.session("main")
        self._sql = target.backend.family == "sql"

    async def open(self) -> None:
        """Open the manager (warms `size` connections)."""
        await self.manager.open()

    async def close(self) -> None:
        """Close the manager."""
        await self.manager.close()

    async def checkout(self, k: int) -> None:
        """A session that checks its connection out (SQL) or just yields the handle (Mongo)."""
        async with self.provider as unit:
            if self._sql:
                await unit.connection()

    async def read(self, k: int) -> None:
        """Point read in a session."""
        async with self.provider as unit:
            await _unit_read(unit, k)

    async def write(self, k: int) -> None:
        """Point write in a session (committed when the session ends)."""
        async with self.provider as unit:
            await _unit_write(unit, k)

    async def hold(self, seconds: float) -> float:
        """Hold a session's connection (Mongo: the session's lease) for `seconds`."""
        t0 = perf()
        async with self.provider as unit:
            if self._sql:
                await unit.connection()
            waited = perf() - t0
            await asyncio.sleep(seconds)
        return waited

    def add_route(self, app: FastAPI) -> None:
        """`Depends(manager.session("main"))`."""
        from fastapi import Depends

        provider = self.provider

        @app.get(f"/{self.name}/{{k}}")
        async def endpoint(k: int, db: Any = Depends(provider)) -> dict[str, Any]:
            return {"v": await _unit_get(db, k)}


async def _unit_get(unit: Any, k: int) -> Any:
    if isinstance(unit, AsyncSession):
        return (await unit.execute(SA_READ, {"k": k})).scalar_one()
    doc = await unit[TABLE].find_one({"_id": k})
    return doc["v"] if doc else None


async def _unit_read(unit: Any, k: int) -> None:
    await _unit_get(unit, k)


async def _unit_write(unit: Any, k: int) -> None:
    if isinstance(unit, AsyncSession):
        await unit.execute(SA_WRITE, {"k": k})
    else:
        await unit[TABLE].update_one({"_id": k}, {"$inc": {"v": 1}})


class FastVariant(Variant):
    """`manager.connection("main")`: the driver's connection (Mongo: the database handle)."""

    name = "fast"

    def __init__(self, connman: ConnmanVariant) -> None:
        super().__init__(connman.target, connman.settings)
        self.manager = connman.manager
        driver = self.target.backend.driver
        self._sql = self.target.backend.family == "sql"
        if self._sql:
            self._read_sql, self._write_sql = driver_sql(driver)
            self._read_op, self._write_op = DRIVER_OPS[driver]

    def _conn(self) -> AbstractAsyncContextManager[Any]:
        return self.manager.connection("main")

    async def checkout(self, k: int) -> None:
        """Check the driver connection out and back in."""
        async with self._conn():
            pass

    async def read(self, k: int) -> None:
        """Point read with the driver's API."""
        async with self._conn() as conn:
            if self._sql:
                await self._read_op(conn, self._read_sql, k)
            else:
                await conn[TABLE].find_one({"_id": k})

    async def write(self, k: int) -> None:
        """Point write in a driver-level transaction."""
        async with self._conn() as conn:
            if self._sql:
                await self._write_op(conn, self._write_sql, k)
            else:
                await conn[TABLE].update_one({"_id": k}, {"$inc": {"v": 1}})

    async def hold(self, seconds: float) -> float:
        """Hold the driver connection `seconds`."""
        t0 = perf()
        async with self._conn():
            waited = perf() - t0
            await asyncio.sleep(seconds)
        return waited

    def add_route(self, app: FastAPI) -> None:
        """A handler that uses `async with manager.connection("main")` itself."""

        @app.get(f"/{self.name}/{{k}}")
        async def endpoint(k: int) -> dict[str, Any]:
            async with self._conn() as conn:
                if self._sql:
                    await self._read_op(conn, self._read_sql, k)
                    return {"v": 0}
                doc = await conn[TABLE].find_one({"_id": k})
                return {"v": doc["v"] if doc else None}


# ---------------------------------------------------------------------------- hand-written
class HandSql(Variant):
    """create_async_engine + async_sessionmaker(expire_on_commit=False) + a get_db generator."""

    name = "hand"

    def __init__(self, target: Target, settings: PoolSettings) -> None:
        super().__init__(target, settings)
        self.engine: AsyncEngine | None = None
        self.session_local: async_sessionmaker[AsyncSession] | None = None
        self.db = asynccontextmanager(self.get_db)

    async def open(self) -> None:
        """Create the engine with the same pool settings and warm `size` connections."""
        s = self.settings
        connect_args: dict[str, Any] = {}
        if self.target.backend.server == "pgbouncer":
            connect_args = {"statement_cache_size": 0, "prepared_statement_cache_size": 0}
        # An explicit queue pool: SQLAlchemy 2.0 gives file SQLite databases a NullPool, which
        # takes no pool_size (same as connman does).
        self.engine = create_async_engine(
            self.target.url, pool_size=s.size, max_overflow=s.overflow, pool_timeout=s.timeout,
            pool_recycle=int(s.recycle), pool_pre_ping=s.pre_ping, connect_args=connect_args,
            poolclass=AsyncAdaptedQueuePool)
        self.session_local = async_sessionmaker(self.engine, expire_on_commit=False)
        conns = [self.engine.connect() for _ in range(s.size)]
        await asyncio.gather(*(c.start() for c in conns))
        for c in conns:
            await c.close()

    async def close(self) -> None:
        """Dispose the engine."""
        if self.engine is not None:
            await self.engine.dispose()

    async def get_db(self) -> AsyncIterator[AsyncSession]:
        """The FastAPI-docs dependency: yield a session, commit, roll back on error."""
        assert self.session_local is not None
        async with self.session_local() as session:
            try:
                yield session
                await session.commit()
            except Exception:
                await session.rollback()
                raise

    async def checkout(self, k: int) -> None:
        """A session that checks its connection out."""
        async with self.db() as session:
            await session.connection()

    async def read(self, k: int) -> None:
        """Point read in a session."""
        async with self.db() as session:
            await _unit_read(session, k)

    async def write(self, k: int) -> None:
        """Point write in a session, committed by get_db."""
        async with self.db() as session:
            await _unit_write(session, k)

    async def hold(self, seconds: float) -> float:
        """Hold a session's connection `seconds`."""
        t0 = perf()
        async with self.db() as session:
            await session.connection()
            waited = perf() - t0
            await asyncio.sleep(seconds)
        return waited

    def add_route(self, app: FastAPI) -> None:
        """`Depends(get_db)` (FastAPI's default scope: the commit runs after the response)."""
        from fastapi import Depends

        get_db = self.get_db

        @app.get(f"/{self.name}/{{k}}")
        async def endpoint(k: int, db: AsyncSession = Depends(get_db)) -> dict[str, Any]:
            return {"v": await _unit_get(db, k)}

        # The same dependency with connman's semantics: commit before the response is sent.
        @app.get(f"/{self.name}_fn/{{k}}")
        async def endpoint_fn(k: int, db: AsyncSession = Depends(get_db, scope="function")
                              ) -> dict[str, Any]:
            return {"v": await _unit_get(db, k)}


class HandMongo(Variant):
    """A bare client and `client[db]` from a `get_db` dependency."""

    name = "hand"

    def __init__(self, target: Target, settings: PoolSettings) -> None:
        super().__init__(target, settings)
        self.client: Any = None
        self._counter: Any = None

    async def open(self) -> None:
        """Create the client with the same pool settings and warm `size` connections."""
        self._counter = _open_counter()
        self.client = _mongo_client(self.target, self.settings, [self._counter])
        await asyncio.gather(*(self.client.admin.command("ping")
                               for _ in range(self.settings.size)))

    async def close(self) -> None:
        """Close the client."""
        await _mongo_close(self.client)

    def opened(self) -> int:
        """Connections the client has opened so far (CMAP `connection_created`)."""
        return int(self._counter.count) if self._counter is not None else 0

    async def get_db(self) -> Any:
        """The usual dependency: the database handle of the app's client."""
        return self.client[self.target.database]

    async def checkout(self, k: int) -> None:
        """Get the database handle."""
        await self.get_db()

    async def read(self, k: int) -> None:
        """find_one by _id."""
        db = await self.get_db()
        await db[TABLE].find_one({"_id": k})

    async def write(self, k: int) -> None:
        """update_one by _id ($inc)."""
        db = await self.get_db()
        await db[TABLE].update_one({"_id": k}, {"$inc": {"v": 1}})

    async def hold(self, seconds: float) -> float:
        """Not measured: a handle holds no connection (see the exhaustion scenario)."""
        raise NotImplementedError

    def add_route(self, app: FastAPI) -> None:
        """`Depends(get_db)`."""
        from fastapi import Depends

        get_db = self.get_db

        @app.get(f"/{self.name}/{{k}}")
        async def endpoint(k: int, db: Any = Depends(get_db)) -> dict[str, Any]:
            return {"v": await _unit_get(db, k)}


def _mongo_client(target: Target, s: PoolSettings, listeners: list[Any] | None = None) -> Any:
    kw = {**target.mongo_options(s), "event_listeners": listeners or []}
    if target.backend.driver == "motor":
        from motor.motor_asyncio import AsyncIOMotorClient

        return AsyncIOMotorClient(target.url, **kw)
    from pymongo import AsyncMongoClient

    return AsyncMongoClient(target.url, **kw)


_CMAP_EVENTS = ("pool_created", "pool_ready", "pool_cleared", "pool_closed", "connection_ready",
                "connection_closed", "connection_check_out_started",
                "connection_check_out_failed", "connection_checked_out", "connection_checked_in")


def _open_counter() -> Any:
    """A PyMongo CMAP listener whose `count` is the connections its client has opened."""
    from pymongo import monitoring

    def ignore(self: Any, event: Any) -> None:
        return None

    def created(self: Any, event: Any) -> None:
        self.count += 1

    cls = type("OpenCounter", (monitoring.ConnectionPoolListener,),
               {"count": 0, "connection_created": created,
                **dict.fromkeys(_CMAP_EVENTS, ignore)})
    return cls()


async def _mongo_close(client: Any) -> None:
    if client is None:
        return
    result = client.close()
    if asyncio.iscoroutine(result):
        await result


def with_max_waiting(settings: PoolSettings, max_waiting: int) -> PoolSettings:
    """A copy of `settings` with `max_waiting` set."""
    return replace(settings, max_waiting=max_waiting)
