"""SQLAlchemy async engines (asyncpg, aiomysql, asyncmy, aiosqlite) behind the connman pool.

Maps the schema to `create_async_engine` keywords, feeds the stats from pool events, and emulates
what SQLAlchemy lacks: an idle timeout, lifetime jitter (both checked at checkout, where
`pool_recycle` is checked) and counted reasons for every closed connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util import greenlet_spawn

from .._pool import Pool, finish, jittered_lifetime, shielded
from ..config import PoolConfig
from ..errors import ConfigurationError
from ..stats import EventHub

_CONNECT_TIMEOUT_ARG = {"asyncpg": "timeout", "aiomysql": "connect_timeout",
                        "asyncmy": "connect_timeout"}


def engine_options(name: str, config: PoolConfig) -> dict[str, Any]:
    """The `create_async_engine` keywords for a pool config: the mapping table, as code."""
    driver = config.driver_name
    if config.size < 1:
        raise ConfigurationError(
            f"pool {name!r}: size: must be at least 1 for SQL pools "
            "(SQLAlchemy reads pool_size=0 as 'no limit')", pool=name, field="size")
    url = config.url.get_secret_value()
    if driver == "aiosqlite" and (":memory:" in url or url.rstrip("/").endswith("sqlite+aiosqlite:")):
        raise ConfigurationError(
            f"pool {name!r}: url: an in-memory SQLite database cannot be pooled; use a file",
            pool=name, field="url")
    opts = dict(config.options)
    raw_args = opts.pop("connect_args", None) or {}
    if not isinstance(raw_args, dict):
        raise ConfigurationError(f"pool {name!r}: options: 'connect_args' must be a mapping",
                                 pool=name, field="options")
    connect_args: dict[str, Any] = dict(raw_args)
    arg = _CONNECT_TIMEOUT_ARG.get(driver)
    if arg is not None:
        connect_args.setdefault(arg, config.connect_timeout)
    elif driver == "aiosqlite":
        # sqlite3's `timeout` is how long a writer waits for the file lock: the same promise as
        # `timeout` (wait for the database, then fail), instead of sqlite3's own 5 s.
        connect_args.setdefault("timeout", config.timeout)
    if config.external_pooler == "pgbouncer":
        # Transaction pooling hands each transaction a different server connection, so named
        # prepared statements cannot be reused: turn off both asyncpg's and SQLAlchemy's caches.
        connect_args.setdefault("statement_cache_size", 0)
        connect_args.setdefault("prepared_statement_cache_size", 0)
    kw: dict[str, Any] = {
        "pool_size": config.size,
        "max_overflow": config.overflow,
        # connman's gate bounds the wait; the native timeout is a backstop just beyond it.
        "pool_timeout": config.timeout + 1.0,
        "pool_recycle": int(config.recycle) if config.recycle is not None else -1,
        "pool_pre_ping": config.pre_ping,
        "echo": config.echo,
        "poolclass": AsyncAdaptedQueuePool,
        "pool_reset_on_return": "rollback",
    }
    if connect_args:
        kw["connect_args"] = connect_args
    kw.update(opts)
    return kw


class SQLAlchemyPool(Pool):
    """A pool whose sessions are `AsyncSession`s on one `AsyncEngine`."""

    backend = "sqlalchemy"

    def __init__(self, name: str, config: PoolConfig, hub: EventHub) -> None:
        super().__init__(name, config, hub)
        self._options = engine_options(name, config)
        self._engine: AsyncEngine | None = None
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self.connect_hooks: list[Callable[[Any, Any], None]] = []
        self._finish_timeout = config.connect_timeout + config.timeout
        self._disposed_pool: Any = None

    # ------------------------------------------------------------------ lifecycle
    async def _open(self) -> None:
        self._disposed_pool = None
        engine = create_async_engine(self.config.url.get_secret_value(), **self._options)
        self._engine = engine
        self._install_events(engine)
        self._sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        # Warm `size` connections at once, then give them back: the pool starts full.
        conns = [engine.connect() for _ in range(self.config.size)]
        try:
            results = await asyncio.gather(*(c.start() for c in conns), return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r
            await conns[0].exec_driver_sql("SELECT 1")
        finally:
            for c in conns:
                if c.sync_connection is not None:
                    await shielded(c.close())

    async def _close(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            if self._active:
                self._disposed_pool = engine.sync_engine.pool
            await engine.dispose()

    # ------------------------------------------------------------------ events -> stats
    def _install_events(self, engine: AsyncEngine) -> None:
        sync_engine = engine.sync_engine
        pool = sync_engine.pool
        cfg = self.config

        @event.listens_for(sync_engine, "do_connect")
        def do_connect(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> Any:
            t0 = time.monotonic()
            self.counters.add("connections_num")
            try:
                conn = dialect.connect(*cargs, **cparams)
            except BaseException:
                self.counters.add("connections_errors")
                raise
            finally:
                elapsed_ms = (time.monotonic() - t0) * 1000
                self.counters.add("connections_ms", elapsed_ms)
                conn_rec.info["cm_connect_ms"] = elapsed_ms
            return conn

        @event.listens_for(pool, "connect")
        def on_connect(dbapi_con: Any, rec: Any) -> None:
            now = time.monotonic()
            rec.info["cm_born"] = now
            if cfg.recycle is not None:
                rec.info["cm_deadline"] = now + jittered_lifetime(cfg.recycle, cfg.recycle_jitter)
            self._emit("connect", rec.info.pop("cm_connect_ms", 0.0))

        for hook in self.connect_hooks:
            event.listen(pool, "connect", hook)

        @event.listens_for(pool, "checkout")
        def on_checkout(dbapi_con: Any, rec: Any, proxy: Any) -> None:
            info = rec.info
            now = time.monotonic()
            deadline = info.get("cm_deadline")
            if deadline is not None and now >= deadline:
                info["cm_reason"] = "recycle"
                raise sa_exc.DisconnectionError("connman: connection exceeded recycle")
            last_in = info.get("cm_in")
            if cfg.idle is not None and last_in is not None and now - last_in > cfg.idle:
                info["cm_reason"] = "idle_close"
                raise sa_exc.DisconnectionError("connman: connection exceeded idle")

        @event.listens_for(pool, "checkin")
        def on_checkin(dbapi_con: Any, rec: Any) -> None:
            if rec is not None:
                rec.info["cm_in"] = time.monotonic()

        @event.listens_for(pool, "invalidate")
        def on_invalidate(dbapi_con: Any, rec: Any, error: BaseException | None) -> None:
            rec.info.setdefault("cm_reason", "lost")

        @event.listens_for(pool, "close")
        def on_close(dbapi_con: Any, rec: Any) -> None:
            info = rec.info
            reason = info.pop("cm_reason", None)
            if reason is None:
                deadline = info.get("cm_deadline")
                if deadline is not None and time.monotonic() >= deadline:
                    reason = "recycle"  # SQLAlchemy's own pool_recycle got there first
                elif getattr(pool, "_invalidate_time", 0) > getattr(rec, "starttime", 0):
                    reason = "lost"  # the whole pool was invalidated (server restarted)
                else:
                    reason = "close"
            self.connection_event(reason)

    # ------------------------------------------------------------------ sessions
    async def _begin(self) -> AsyncSession:
        assert self._sessionmaker is not None
        return self._sessionmaker()

    async def _end(self, session: AsyncSession, error: BaseException | None) -> None:
        try:
            if error is None and session.in_transaction():
                await session.commit()
        finally:
            # close() rolls back what was not committed and returns the connection, also when
            # the request was cancelled.
            await finish(session.close, self._finish_timeout, self.name)
            await self._close_if_disposed()

    async def _close_if_disposed(self) -> None:
        if self._disposed_pool is not None:
            # A session outlived the drain deadline: its connection went back to a pool that
            # was already disposed, so dispose that pool again to close it.
            await finish(partial(greenlet_spawn, self._disposed_pool.dispose),
                         self._finish_timeout, self.name)

    async def _begin_raw(self) -> tuple[Any, Any]:
        fairy = await self._require_engine().raw_connection()
        return fairy, fairy.driver_connection

    async def _end_raw(self, fairy: Any, error: BaseException | None) -> None:
        await finish(partial(greenlet_spawn, fairy.close), self._finish_timeout, self.name)
        await self._close_if_disposed()

    def is_connection_error(self, exc: BaseException) -> bool:
        """A DBAPI error that invalidated the connection, or could not make one."""
        if isinstance(exc, sa_exc.DBAPIError):
            return bool(exc.connection_invalidated) or isinstance(
                exc, (sa_exc.OperationalError, sa_exc.InterfaceError))
        return super().is_connection_error(exc)

    async def touch(self, unit: Any) -> None:
        """Check out the session's connection now."""
        await unit.connection()

    def _require_engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError(f"pool {self.name!r} is not open")
        return self._engine

    async def ping(self) -> float:
        """One `SELECT 1` on a pooled connection; latency in milliseconds."""
        engine = self._require_engine()
        t0 = time.perf_counter()
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
        return (time.perf_counter() - t0) * 1000

    def _gauges(self) -> tuple[int, int]:
        if self._engine is None:
            return 0, 0
        pool: Any = self._engine.sync_engine.pool
        idle = int(pool.checkedin())
        return idle + int(pool.checkedout()), idle

    def native(self) -> AsyncEngine:
        """The `AsyncEngine`."""
        return self._require_engine()

    def driver_options(self) -> dict[str, Any]:
        """The `create_async_engine` keywords (poolclass by name)."""
        out = {k: (v.__name__ if isinstance(v, type) else v) for k, v in self._options.items()}
        return out

    async def server_info(self) -> dict[str, Any]:
        """Version, max connections and the server-side count of this pool's connections."""
        engine = self._require_engine()
        driver = self.config.driver_name
        info: dict[str, Any] = {"version": None, "max_connections": None, "reserved": 0,
                                "server_connections": None}
        async with engine.connect() as conn:
            if driver == "asyncpg":
                info["version"] = (await conn.exec_driver_sql("SHOW server_version")).scalar()
                info["max_connections"] = int(
                    (await conn.exec_driver_sql("SHOW max_connections")).scalar_one())
                info["reserved"] = int((await conn.exec_driver_sql(
                    "SHOW superuser_reserved_connections")).scalar_one())
                info["server_connections"] = int((await conn.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND usename = current_user AND backend_type = 'client backend'"
                ))).scalar_one())
            elif driver in ("aiomysql", "asyncmy"):
                info["version"] = (await conn.exec_driver_sql("SELECT VERSION()")).scalar()
                info["max_connections"] = int(
                    (await conn.exec_driver_sql("SELECT @@max_connections")).scalar_one())
                info["server_connections"] = int((await conn.exec_driver_sql(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                    "WHERE USER = SUBSTRING_INDEX(CURRENT_USER(), '@', 1)")).scalar_one())
            else:
                info["version"] = (await conn.exec_driver_sql("SELECT sqlite_version()")).scalar()
        return info
