"""MongoDB through PyMongo's `AsyncMongoClient` (default) or Motor, behind the connman pool.

Maps the schema to client keywords, feeds the stats from CMAP pool events, and emulates what PyMongo
lacks: a max connection lifetime (with jitter), enforced where a connection comes back. A session
yields a `MongoUnit` (`_mongo_unit.py`): the database, with every operation under the gate, cursors
cleaned up and, with `transaction` on, one multi-document transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from typing import Any

from pymongo.errors import OperationFailure, PyMongoError

from .._pool import Pool, shielded
from .._url import url_path_database
from ..config import PoolConfig
from ..errors import ConnectionLost, PoolNotOpen, ServerUnavailable
from ..stats import EventHub
from ._mongo_errors import (
    AUTHENTICATION_FAILED,
    conflict,
    handshake_refusal,
    one_line,
    transient,
    typed_error,
)
from ._mongo_events import CMAPListener, CommandLogger
from ._mongo_unit import MongoUnit, _Cursor, close_cursors
from .drivers import pymongo as driver

logger = logging.getLogger("connman.mongo")


def client_options(name: str, config: PoolConfig) -> dict[str, Any]:
    """The client keywords for a pool config: the mapping table, as code."""
    kw: dict[str, Any] = {
        "minPoolSize": config.size,
        "maxPoolSize": config.max_size,
        # connman's gate bounds the wait; the native timeout is a backstop just beyond it.
        "waitQueueTimeoutMS": int((config.timeout + 1.0) * 1000),
        "connectTimeoutMS": int(config.connect_timeout * 1000),
        "serverSelectionTimeoutMS": int(config.connect_timeout * 1000),
        "appname": f"connman:{name}",
    }
    if config.idle is not None:
        kw["maxIdleTimeMS"] = int(config.idle * 1000)
    if config.statement_timeout is not None:
        kw[_statement_timeout_option(config.driver_name)] = int(config.statement_timeout * 1000)
    kw.update(config.options)
    return kw


def _statement_timeout_option(driver: str) -> str:
    """`timeoutMS`: PyMongo's client-side operation timeout (CSOT) bounds each operation whole,
    server selection, checkout and retries included, and closes a connection it timed out on.

    Not with AsyncMongoClient before PyMongo 4.13.1 (PYTHON-5406): its server monitor inherits
    the deadline of the operation that restarted it, so after one timeout the monitor's checks
    all time out and the client never sees the server again. There `socketTimeoutMS` (each read
    on a connection) is the bound instead. Motor's monitors are threads, unaffected.
    """
    import pymongo

    if driver == "pymongo" and tuple(pymongo.version_tuple[:3]) < (4, 13, 1):
        return "socketTimeoutMS"
    return "timeoutMS"


def database_of(config: PoolConfig) -> str:
    """The database a session yields: the `database` field, else the URL's path."""
    db = config.database or url_path_database(config.url.get_secret_value())
    if not db:
        raise ValueError("no database: set 'database' or put it in the URL path")
    return db


def _limit_of(status: Any) -> int | None:
    """The connection limit in a `serverStatus` reply.

    mongod reports available = limit - current; a server that reports 0 (SecantusDB) has no limit
    to report, since this very connection was accepted.
    """
    conns = status.get("connections") or {}
    if "current" in conns and int(conns.get("available") or 0) > 0:
        return int(conns["current"]) + int(conns["available"])
    return None


class MongoPool(Pool):
    """A pool whose sessions are `MongoUnit`s: database handles of one Mongo client."""

    backend = "mongo"

    def __init__(self, name: str, config: PoolConfig, hub: EventHub) -> None:
        super().__init__(name, config, hub)
        self._options = client_options(name, config)
        self._database = database_of(config)
        self._listener = CMAPListener(self)
        self._client: Any = None
        self._db: Any = None
        self._motor = config.driver_name == "motor"
        self._orphans: dict[asyncio.Task[Any], set[_Cursor]] = {}
        self._orphan_of: dict[_Cursor, asyncio.Task[Any]] = {}
        self._cleanups: set[asyncio.Task[None]] = set()
        self._inherited: list[Any] = []

    async def _open(self) -> None:
        listeners: list[Any] = [self._listener]
        if self.config.echo:
            listeners.append(CommandLogger(self.name))
        url = self.config.url.get_secret_value()
        if self._motor:
            from motor.motor_asyncio import AsyncIOMotorClient

            self._client = AsyncIOMotorClient(url, event_listeners=listeners, **self._options)
        else:
            from pymongo import AsyncMongoClient

            self._client = AsyncMongoClient(url, event_listeners=listeners, **self._options)
        self._db = self._client[self._database]
        t0 = time.monotonic()
        await self._first_contact()
        await self._warm(self.config.connect_timeout - (time.monotonic() - t0))
        self._hook_checkins()

    async def _warm(self, budget: float) -> None:
        """Return once `size` connections are open and ready (CMAP `connection_ready`).

        Concurrent pings may all run on one or two connections (PyMongo opens at most two at
        once and reuses a connection as soon as it is back), so the pings only prompt the pool;
        the count of ready connections decides. PyMongo's own `minPoolSize` upkeep fills the rest.
        """
        listener = self._listener
        event = asyncio.Event()
        listener.changed = (asyncio.get_running_loop(), event)
        try:
            async with asyncio.timeout(max(0.1, budget)):
                while True:
                    with listener.lock:
                        missing = self.config.size - len(listener.ready)
                    if missing <= 0:
                        return
                    # `size` pings at once: the open connections take `size - missing` of them
                    # and the others make the pool open new ones, never more than `size` in all
                    # (more pings than that would warm overflow connections too).
                    event.clear()
                    await asyncio.gather(*(self._client.admin.command("ping")
                                           for _ in range(self.config.size)))
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.05):
                            await event.wait()
        except TimeoutError:
            with listener.lock:
                ready = len(listener.ready)
            logger.warning("connman: pool %r: %d of %d connections open after %.1fs; the driver "
                           "opens the rest in the background", self.name, ready,
                           self.config.size, self.config.connect_timeout)
        finally:
            listener.changed = None

    async def _first_contact(self) -> None:
        """The first command, watched: a server that answers the handshake with an error (a
        failed authentication) ends the open at once instead of after `connect_timeout` of
        PyMongo's retries, and PyMongo's raw reply (`$clusterTime`, signature bytes) is never
        quoted: the error is one line naming the cause.
        """
        task = asyncio.ensure_future(self._read_limit())
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.05)
                refused = handshake_refusal(self._client)
                if refused is not None and not task.done():
                    raise refused
            task.result()
        except PyMongoError as exc:
            raise one_line(exc) from None
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task})

    async def _read_limit(self) -> None:
        try:
            status = await self._client.admin.command("serverStatus")
        except OperationFailure as exc:
            if exc.code == AUTHENTICATION_FAILED:  # not a missing privilege: the open fails
                raise
            await self._client.admin.command("ping")  # not authorised to read it: a ping warms
            return
        self.connection_limit = _limit_of(status)

    async def _close(self) -> None:
        if self._cleanups:
            await asyncio.wait(list(self._cleanups), timeout=self.config.timeout)
        client, self._client = self._client, None
        self._orphans.clear()
        self._orphan_of.clear()
        if client is None:
            return
        if self._motor:
            client.close()
        else:
            await client.close()

    def _forget_after_fork(self) -> None:
        """In a forked child: drop the parent's client without closing its connections.

        The client stays referenced, so no finalizer of its sockets runs in the child either.
        """
        if self._client is not None:
            self._inherited.append(self._client)
        self._client = self._db = None
        self._listener = CMAPListener(self)
        self._orphans.clear()
        self._orphan_of.clear()
        self._cleanups.clear()

    def _maintenance_interval(self) -> float | None:
        cfg = self.config
        periods = ([cfg.recycle / 20] if cfg.recycle is not None else []) + (
            [cfg.shrink_after / 10] if cfg.overflow else [])
        return max(0.05, min(1.0, *periods)) if periods else None

    def _server_pools(self) -> list[Any]:
        # PyMongo's internals (the topology's servers and their pools): drivers/pymongo.py.
        client = self._client
        return [] if client is None else driver.server_pools(client, motor=self._motor)

    def _hook_checkins(self) -> None:
        """Enforce `recycle` where a connection comes back: wrap each server pool's `checkin`."""
        if self.config.recycle is None:
            return
        for pool in self._server_pools():
            driver.wrap_checkin(pool, self._listener.retire_if_expired)

    async def _maintain(self) -> None:
        # Idle connections past their deadline are retired too: PyMongo then closes them as stale
        # instead of reusing them (busy ones are retired at check-in).
        self._hook_checkins()
        now = time.monotonic()
        for pool in self._server_pools():
            try:
                conns = list(pool.conns)
            except RuntimeError:  # mutated by a Motor worker thread meanwhile; next round
                continue
            for conn in conns:
                if self._listener.expired(pool.address, conn.id, now):
                    driver.retire(conn)
            if self.config.overflow:
                await driver.shrink(pool, self.config.size, self.config.shrink_after,
                                    pool.lock if self._motor else None)

    # ------------------------------------------------------------------ units of work
    async def _begin(self) -> Any:
        session = None
        if self.config.transaction:
            session = self._client.start_session()
            if inspect.isawaitable(session):  # Motor
                session = await session
            try:
                started = session.start_transaction()
                if inspect.isawaitable(started):
                    await started
            except BaseException:
                await shielded(session.end_session())
                raise
        return MongoUnit(self, self._db, session, self.config.transaction)

    async def _end(self, unit: Any, error: BaseException | None) -> None:
        await shielded(self._finish(unit, error, asyncio.current_task()))

    async def _finish(self, unit: MongoUnit, error: BaseException | None,
                      owner: asyncio.Task[Any] | None) -> None:
        cursors = await unit._finish(error)
        session = unit.client_session
        if session is None:
            if error is None:
                for cursor in cursors:  # still to be read (a streamed response): hand over
                    self._adopt(cursor, owner)
            else:
                await close_cursors(self, cursors, own_slot=True)
            return
        try:
            await close_cursors(self, cursors, own_slot=True)
            if error is None and self.config.commit == "auto":
                await self._commit(session)
            elif error is None:  # `commit: manual`: what the app left uncommitted is aborted
                if session.in_transaction:
                    await session.abort_transaction()
            else:
                try:
                    await session.abort_transaction()
                except PyMongoError:
                    logger.debug("connman: pool %r: abort failed", self.name, exc_info=True)
                # A typed outage that already says "nothing applied, retry" stays as it is.
                settled = isinstance(error, ServerUnavailable) or (
                    isinstance(error, ConnectionLost) and error.retry_after is not None)
                if transient(error) and not settled:
                    raise conflict(self, error, at_commit=False)
        finally:
            await session.end_session()

    async def _commit(self, session: Any) -> None:
        """Commit; an unknown outcome is retried (the transactions spec) within `timeout`."""
        deadline = time.monotonic() + self.config.timeout
        while True:
            try:
                await session.commit_transaction()
                return
            except PyMongoError as exc:
                if (exc.has_error_label("UnknownTransactionCommitResult")
                        and time.monotonic() < deadline
                        and getattr(exc, "code", None) != 50):  # MaxTimeMSExpired: no retry
                    continue
                if exc.has_error_label("TransientTransactionError"):
                    raise conflict(self, exc, at_commit=True) from exc
                typed = typed_error(self, exc, op="commitTransaction", at_commit=True)
                if typed is not None:
                    raise typed from exc
                raise

    async def _begin_raw(self) -> tuple[Any, Any]:
        unit = MongoUnit(self, self._db, None, False)
        return unit, unit

    async def _end_raw(self, handle: Any, error: BaseException | None) -> None:
        await shielded(self._finish(handle, error, asyncio.current_task()))

    # ------------------------------------------------------------------ cursors past their unit
    def _adopt(self, cursor: _Cursor, task: asyncio.Task[Any] | None = None) -> None:
        """Track a cursor that outlives its unit: closed when `task` (default: this one) ends."""
        task = task or asyncio.current_task()
        if task is None or cursor in self._orphan_of:
            return
        held = self._orphans.get(task)
        if held is None:
            held = self._orphans[task] = set()
            task.add_done_callback(self._task_done)
        held.add(cursor)
        self._orphan_of[cursor] = task

    def _disown(self, cursor: _Cursor) -> None:
        task = self._orphan_of.pop(cursor, None)
        if task is not None:
            held = self._orphans.get(task)
            if held is not None:
                held.discard(cursor)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        cursors = self._orphans.pop(task, set())
        for c in cursors:
            self._orphan_of.pop(c, None)
        live = [c for c in cursors if c.is_open()]
        if not live or self._client is None:
            return
        cleanup = asyncio.get_running_loop().create_task(
            close_cursors(self, live, own_slot=False), name=f"connman-cursors-{self.name}")
        self._cleanups.add(cleanup)
        cleanup.add_done_callback(self._cleanups.discard)

    # ------------------------------------------------------------------ health and stats
    def _in_use(self) -> int:
        with self._listener.lock:
            return self._listener.in_use

    def saturated(self) -> bool:
        """Whether a new checkout would wait: no free gate slot, or every driver connection
        checked out (CMAP: work outside the gate counts too). No I/O."""
        return super().saturated() or self._in_use() >= self.config.max_size

    def off_books(self) -> int:
        """Driver connections checked out (CMAP) beyond the gate's leases (0: none)."""
        return max(0, self._in_use() - self._active)

    def _drop_driver(self) -> None:
        """Drop a client whose event loop is gone (Motor: closed; PyMongo: sockets closed)."""
        client, self._client = self._client, None
        self._orphans.clear()
        self._orphan_of.clear()
        self._cleanups.clear()
        if client is None:
            return
        if self._motor:
            client.close()  # Motor's client is thread-based: closing needs no event loop
            return
        driver.close_client_without_loop(client)

    async def _ping(self) -> float:
        """One `ping` command; latency in milliseconds."""
        client = self._require_client()
        t0 = time.perf_counter()
        await client.admin.command("ping")
        return (time.perf_counter() - t0) * 1000

    def stats(self) -> dict[str, int]:
        """As `Pool.stats`; `requests_active` also counts what the driver has checked out."""
        out = super().stats()
        if self._opened:
            out["requests_active"] = max(out["requests_active"], self._in_use())
        return out

    def _require_client(self) -> Any:
        if self._client is None:
            raise PoolNotOpen(f"pool {self.name!r} is not open", pool=self.name)
        return self._client

    def _gauges(self) -> tuple[int, int]:
        # Available to a new request: idle in the driver (CMAP) and a gate slot free to use it,
        # since a unit holds its slot between its operations while its connection is back idle.
        with self._listener.lock:
            idle = self._listener.open - self._listener.in_use
            return self._listener.open, max(0, min(idle, self.config.max_size - self._active))

    def native(self) -> Any:
        """The `AsyncMongoClient` (or Motor client)."""
        return self._require_client()

    @property
    def database(self) -> Any:
        """The PyMongo/Motor database that units of work wrap (outside the gate: prefer sessions)."""
        return self._db

    @property
    def database_name(self) -> str:
        """The name of the database sessions yield."""
        return self._database

    def use_database(self, name: str | None) -> None:
        """Make sessions yield database `name` from now on (None: the configured one).

        No I/O; works open or closed. `connman.testing` gives each test a fresh database this way.
        """
        self._database = name or database_of(self.config)
        if self._client is not None:
            self._db = self._client[self._database]

    def driver_options(self) -> dict[str, Any]:
        """The client keywords the mapping produced."""
        return dict(self._options)

    async def _server_info(self) -> dict[str, Any]:
        """Version, connection limit and current connections from `buildInfo`/`serverStatus`."""
        client = self._require_client()
        info: dict[str, Any] = {"version": None, "max_connections": None, "reserved": 0,
                                "server_connections": None}
        build = await client.admin.command("buildInfo")
        info["version"] = build.get("version")
        try:
            status = await client.admin.command("serverStatus")
        except Exception:
            return info
        conns = status.get("connections") or {}
        if "current" in conns:
            info["server_connections"] = int(conns["current"])
        info["max_connections"] = _limit_of(status)
        return info
