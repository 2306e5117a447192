"""MongoDB through PyMongo's `AsyncMongoClient` (default) or Motor, behind the connman pool.

Maps the schema to client keywords, feeds the stats from CMAP pool events, and emulates what PyMongo
lacks: a max connection lifetime (with jitter).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pymongo import monitoring
from pymongo.errors import OperationFailure

from .._pool import Pool, jittered_lifetime
from .._url import url_path_database
from ..config import PoolConfig
from ..stats import EventHub

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


class _CMAPListener(monitoring.ConnectionPoolListener):
    """Turns PyMongo's pool events into connman stats; thread-safe (Motor calls from threads)."""

    def __init__(self, pool: MongoPool) -> None:
        self.pool = pool
        self.lock = threading.Lock()
        self.open = 0
        self.in_use = 0
        self.deadlines: dict[tuple[Any, int], float] = {}
        self.marked: set[tuple[Any, int]] = set()

    def pool_created(self, event: Any) -> None:
        """Nothing to count."""

    def pool_ready(self, event: Any) -> None:
        """Nothing to count."""

    def pool_cleared(self, event: Any) -> None:
        """Nothing to count: the cleared connections are counted as they close."""

    def pool_closed(self, event: Any) -> None:
        """Nothing to count."""

    def connection_created(self, event: Any) -> None:
        """A connection attempt began."""
        cfg = self.pool.config
        with self.lock:
            self.open += 1
            if cfg.recycle is not None:
                life = jittered_lifetime(cfg.recycle, cfg.recycle_jitter)
                self.deadlines[(event.address, event.connection_id)] = time.monotonic() + life
        self.pool.counters.add("connections_num")

    def connection_ready(self, event: Any) -> None:
        """A connection finished its handshake."""
        duration = getattr(event, "duration", None)
        if duration is not None:
            self.pool.counters.add("connections_ms", duration * 1000)
        self.pool._emit("connect", (duration or 0.0) * 1000)

    def connection_closed(self, event: Any) -> None:
        """A connection was closed; count why."""
        key = (event.address, event.connection_id)
        with self.lock:
            self.open -= 1
            self.deadlines.pop(key, None)
            was_marked = key in self.marked
            self.marked.discard(key)
        reason = event.reason
        if reason == monitoring.ConnectionClosedReason.IDLE:
            name = "idle_close"
        elif reason == monitoring.ConnectionClosedReason.STALE:
            name = "recycle" if was_marked else "lost"
        elif reason == monitoring.ConnectionClosedReason.ERROR:
            name = "lost"
        else:
            name = "close"
        self.pool.connection_event(name, reason=str(reason))

    def connection_check_out_started(self, event: Any) -> None:
        """Nothing to count."""

    def connection_check_out_failed(self, event: Any) -> None:
        """A checkout failed; a connection error counts as a failed connection attempt."""
        if event.reason == monitoring.ConnectionCheckOutFailedReason.CONN_ERROR:
            self.pool.counters.add("connections_errors")

    def connection_checked_out(self, event: Any) -> None:
        """A connection left the idle set."""
        with self.lock:
            self.in_use += 1

    def connection_checked_in(self, event: Any) -> None:
        """A connection came back to the idle set."""
        with self.lock:
            self.in_use -= 1

    def expired(self, address: Any, conn_id: int, now: float) -> bool:
        """Whether this connection outlived its (jittered) lifetime; marks it if so."""
        key = (address, conn_id)
        with self.lock:
            deadline = self.deadlines.get(key)
            if deadline is None or now < deadline or key in self.marked:
                return False
            self.marked.add(key)
            return True


class _CommandLogger(monitoring.CommandListener):
    """Logs every command (the `echo` setting)."""

    def __init__(self, pool_name: str) -> None:
        self.pool_name = pool_name

    def started(self, event: Any) -> None:
        """Log the command name and database."""
        logger.info("connman[%s]: %s on %s", self.pool_name, event.command_name,
                    event.database_name)

    def succeeded(self, event: Any) -> None:
        """Nothing to log."""

    def failed(self, event: Any) -> None:
        """Log the failure."""
        logger.info("connman[%s]: %s failed", self.pool_name, event.command_name)


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
    """A pool whose sessions are database handles of one Mongo client."""

    backend = "mongo"

    def __init__(self, name: str, config: PoolConfig, hub: EventHub) -> None:
        super().__init__(name, config, hub)
        self._options = client_options(name, config)
        self._database = database_of(config)
        self._listener = _CMAPListener(self)
        self._client: Any = None
        self._db: Any = None
        self._motor = config.driver_name == "motor"

    async def _open(self) -> None:
        listeners: list[Any] = [self._listener]
        if self.config.echo:
            listeners.append(_CommandLogger(self.name))
        url = self.config.url.get_secret_value()
        if self._motor:
            from motor.motor_asyncio import AsyncIOMotorClient

            self._client = AsyncIOMotorClient(url, event_listeners=listeners, **self._options)
        else:
            from pymongo import AsyncMongoClient

            self._client = AsyncMongoClient(url, event_listeners=listeners, **self._options)
        self._db = self._client[self._database]
        import asyncio

        # Warm `size` connections: concurrent commands make the pool open them now, not on
        # demand; one of them asks the server's connection limit for the startup budget check.
        await asyncio.gather(self._read_limit(), *(self._client.admin.command("ping")
                                                   for _ in range(max(0, self.config.size - 1))))

    async def _read_limit(self) -> None:
        try:
            status = await self._client.admin.command("serverStatus")
        except OperationFailure:  # not authorised to read it: a ping warms the connection
            await self._client.admin.command("ping")
            return
        self.connection_limit = _limit_of(status)

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if self._motor:
            client.close()
        else:
            await client.close()

    def _maintenance_interval(self) -> float | None:
        if self.config.recycle is None:
            return None
        return max(0.05, min(1.0, self.config.recycle / 20))

    async def _maintain(self) -> None:
        # PyMongo has no max lifetime. Mark idle connections past their (jittered) deadline with an
        # outdated generation: PyMongo then closes them as stale instead of reusing them.
        client = self._client
        if client is None:
            return
        topology = (client.delegate if self._motor else client)._topology
        now = time.monotonic()
        for server in list(getattr(topology, "_servers", {}).values()):
            pool = server.pool
            try:
                conns = list(pool.conns)
            except RuntimeError:  # mutated by a Motor worker thread meanwhile; next round
                continue
            for conn in conns:
                if self._listener.expired(pool.address, conn.id, now):
                    conn.generation = -1

    async def _begin(self) -> Any:
        return self._db

    async def _end(self, unit: Any, error: BaseException | None) -> None:
        return None

    async def _begin_raw(self) -> tuple[Any, Any]:
        return None, self._db

    async def _end_raw(self, handle: Any, error: BaseException | None) -> None:
        return None

    async def ping(self) -> float:
        """One `ping` command; latency in milliseconds."""
        t0 = time.perf_counter()
        await self._require_client().admin.command("ping")
        return (time.perf_counter() - t0) * 1000

    def _require_client(self) -> Any:
        if self._client is None:
            raise RuntimeError(f"pool {self.name!r} is not open")
        return self._client

    def _gauges(self) -> tuple[int, int]:
        with self._listener.lock:
            return self._listener.open, max(0, self._listener.open - self._listener.in_use)

    def native(self) -> Any:
        """The `AsyncMongoClient` (or Motor client)."""
        return self._require_client()

    @property
    def database(self) -> Any:
        """The database handle sessions yield."""
        return self._db

    def driver_options(self) -> dict[str, Any]:
        """The client keywords the mapping produced."""
        return dict(self._options)

    async def server_info(self) -> dict[str, Any]:
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
