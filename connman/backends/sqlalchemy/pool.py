"""`SQLAlchemyPool`: a connman pool whose sessions are `AsyncSession`s on one `AsyncEngine`.

It composes the package's parts (see `connman.backends.sqlalchemy`): the events, the units of work
and the fast path are its mixins, over the shared `PoolState`, and its connections are in one
`ledger.LedgerPool`. This module holds the rest: its lifecycle (open with warm-up, close, fork),
the connect connman wraps around each driver's, the maintenance that closes connections above
`size`, gauges and server facts, and the test binding's hooks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.util import greenlet_spawn

from ..._pool import finish, shielded
from ...errors import ConnectionLost, ServerUnavailable
from .. import _outage
from .._guard import driver_timeout as _driver_timeout
from ..drivers import psycopg as _psycopg
from .connect import _creator
from .events import EventsMixin
from .fastpath import FastPathMixin
from .state import UnitHook
from .units import UnitsMixin


class SQLAlchemyPool(EventsMixin, UnitsMixin, FastPathMixin):
    """A pool whose sessions are `AsyncSession`s on one `AsyncEngine`."""

    backend = "sqlalchemy"

    # ------------------------------------------------------------------ lifecycle
    async def _open(self) -> None:
        options = self._options
        args: dict[str, Any] = dict(options.get("connect_args") or {})
        connect = self._connect_fn(args.get("async_creator_fn"))
        if connect is not None:
            options = {**options, "connect_args": {**args, "async_creator_fn": connect}}
        engine = create_async_engine(self.config.url.get_secret_value(), **options)
        self._engine = engine
        self._install_events(engine)
        self._sessionmaker = async_sessionmaker(engine, **self._session_kw)
        # Warm `size` connections at once, then give them back: the pool starts full. The
        # warm-up holds `size` slots of the gate, as any checkout does.
        held = 0
        while held < self.config.size and self._reserve():
            held += 1
        conns = [engine.connect() for _ in range(self.config.size)]
        try:
            results = await asyncio.gather(*(c.start() for c in conns), return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r
            # The first query doubles as the startup budget check's question to the server.
            self.connection_limit = await self._read_limit(conns[0])
        finally:
            for c in conns:
                if c.sync_connection is not None:
                    await shielded(c.close())
            for _ in range(held):
                self._unreserve()

    async def _read_limit(self, conn: Any) -> int | None:
        driver = self.config.driver_name
        if driver in ("asyncpg", "psycopg"):
            return int((await conn.exec_driver_sql(_psycopg.LIMIT_SQL)).scalar_one())
        if driver in ("aiomysql", "asyncmy"):
            return int((await conn.exec_driver_sql("SELECT @@max_connections")).scalar_one())
        await conn.exec_driver_sql("SELECT 1")
        return None

    async def _close(self) -> None:
        if self._binding is not None:
            await self._binding.rollback()
        if self._engine is not None:
            # The idle connections close now; those still checked out (a unit past the drain
            # deadline) close when they come back to the disposed ledger.
            engine, self._engine = self._engine, None
            await engine.dispose()

    def _forget_after_fork(self) -> None:
        """In a forked child: start afresh, keeping the parent's engine referenced and unclosed.

        Its connections share sockets with the parent: disposing the engine here (or letting the
        garbage collector finalize it) would send the driver's terminate message on them.
        """
        self._inherited = (self._engine, self._ledger)
        self._engine = self._sessionmaker = None
        self._ledger = None

    def _connect_fn(self, given: Callable[..., Any] | None) -> Callable[..., Any] | None:
        """The `async_creator_fn` SQLAlchemy's dialect awaits for each new connection.

        It receives the connect arguments SQLAlchemy assembled after every `do_connect` listener
        ran, so the documented recipe (a listener on `manager.native(name).sync_engine` that sets
        `cparams["password"]`) works in whatever order listeners were registered: connman adds
        none. It counts and times the connect, fetches `credentials` (awaited here, inside the
        async connect), then calls `given` (an `async_creator_fn` from `options.connect_args`)
        or the driver's connect with its deadline. None for a driver connman does not know.
        """
        inner = given or _creator(self.config.driver_name, self.config.connect_timeout)
        if inner is None:
            return None
        credentials = self._credentials
        counters = self.counters
        started = self._connect_ms

        async def connect(*args: Any, **kw: Any) -> Any:
            t0 = time.monotonic()
            counters.add("connections_num")
            try:
                if credentials is not None:
                    await credentials.apply(kw)
                conn = await inner(*args, **kw)
            except BaseException as exc:
                counters.add("connections_errors")
                if _driver_timeout(exc):
                    raise self._connect_expired() from exc
                if isinstance(exc, OSError):
                    # A socket error (asyncpg's refused connect) is no DBAPI error: SQLAlchemy
                    # passes it on as it is, past `handle_error`, so it is typed here. A driver's
                    # own error is typed in `handle_error`, once SQLAlchemy has wrapped it.
                    typed = _outage.typed_error(self, exc, "connect")
                    if typed is not None:
                        raise typed from exc
                raise
            finally:
                elapsed_ms = (time.monotonic() - t0) * 1000
                counters.add("connections_ms", elapsed_ms)
            if len(started) > 1000:  # setups that failed after the connect never claimed theirs
                started.clear()
            started[id(conn)] = elapsed_ms
            return conn

        return connect

    def off_books(self) -> int:
        """Connections checked out of the ledger beyond what the gate admits (0: none). The
        ledger refuses such a checkout (or takes a lease for it), so this stays 0 unless a
        record's checkin was lost (SQLAlchemy < 2.0.58, repaired by `_reclaim_stranded`)."""
        ledger = self._ledger
        if ledger is None or self._engine is None:
            return 0
        return max(0, ledger.claims() - self.admitted())

    def _drop_driver(self) -> None:
        """Drop the engine of a loop that is gone: close the driver connections' sockets directly
        (no round trip is possible without their loop) and forget the pool."""
        from .._abandon import close_driver_connection

        ledger, self._ledger = self._ledger, None
        self._engine = None
        for dbapi in ledger.drop_all() if ledger is not None else ():
            close_driver_connection(getattr(dbapi, "driver_connection", dbapi))
        self._sessionmaker = None

    def _maintenance_interval(self) -> float | None:
        if self.config.overflow == 0:
            return None  # nothing above `size` to close
        return max(0.05, min(1.0, self.config.shrink_after / 10))

    async def _maintain(self) -> None:
        """Close connections above `size` that have been idle for `overflow_idle`, oldest first.

        One after another, each holding a gate slot while it closes (so `size + overflow` stays the
        maximum) and only while nobody waits; a connection in use is never touched.
        """
        ledger = self._ledger
        size, limit = self.config.size, self.config.shrink_after
        while ledger is not None and not self._closing and ledger.open_count() > size:
            if not self._reserve():
                return
            try:
                record = ledger.retire_oldest(limit, time.monotonic())
                if record is None:
                    return
                try:
                    record.info["cm_reason"] = "idle_close"
                    await finish(partial(greenlet_spawn, record.close), self._finish_timeout,
                                 self.name)
                finally:
                    ledger.retired()
            finally:
                self._unreserve()

    def is_connection_error(self, exc: BaseException) -> bool:
        """A DBAPI error that invalidated the connection, or could not make one (a failed
        `credentials` provider included: a replica's reads then go to the next one)."""
        if isinstance(exc, ServerUnavailable):
            return exc.kind in ("unreachable", "full", "credentials")
        if isinstance(exc, ConnectionLost):
            return True
        if isinstance(exc, sa_exc.DBAPIError):
            return bool(exc.connection_invalidated) or isinstance(
                exc, (sa_exc.OperationalError, sa_exc.InterfaceError))
        return super().is_connection_error(exc)

    async def touch(self, unit: Any) -> None:
        """Check out the session's connection now."""
        await unit.connection()

    # ------------------------------------------------------------------ tests
    def bind(self, binding: UnitHook) -> UnitHook:
        """Join every unit of work of this pool to `binding` (connman.testing's per-test
        isolation: `connman.testing.binding.TestBinding`); returns it.

        No I/O. End it with `await binding.rollback()`, then `unbind()`. Raises `RuntimeError` if
        the pool is bound already.
        """
        if self._binding is not None:
            raise RuntimeError(f"pool {self.name!r} is already bound to a test transaction")
        self._binding = binding
        return binding

    def unbind(self) -> None:
        """Stop joining units of work to the binding (its outer transaction must be rolled back)."""
        binding = self._binding
        if binding is not None and binding.pool is self and binding.active:
            raise RuntimeError(f"pool {self.name!r}: roll the test transaction back before unbind()")
        self._binding = None

    @property
    def binding(self) -> UnitHook | None:
        """The test binding in force, if any."""
        return self._binding

    def _gauges(self) -> tuple[int, int]:
        ledger = self._ledger
        if ledger is None or self._engine is None:
            return 0, 0
        return ledger.open_count(), ledger.checkedin()

    def native(self) -> AsyncEngine:
        """The `AsyncEngine`."""
        return self._require_engine()

    def driver_options(self) -> dict[str, Any]:
        """The `create_async_engine` keywords (poolclass by name)."""
        out = {k: (v.__name__ if isinstance(v, type) else v) for k, v in self._options.items()}
        return out

    async def _server_info(self) -> dict[str, Any]:
        """Version, max connections and the server-side count of this pool's connections."""
        engine = self._require_engine()
        driver = self.config.driver_name
        info: dict[str, Any] = {"version": None, "max_connections": None, "reserved": 0,
                                "server_connections": None}
        async with engine.connect() as conn:
            if driver in ("asyncpg", "psycopg"):
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
