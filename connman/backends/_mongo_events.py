"""PyMongo's pool (CMAP) and command events, as connman's stats, and `recycle` at check-in
(the pool internals that takes are in `drivers/pymongo.py`).

The listeners are thread-safe: Motor calls them from its worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any, Protocol

from pymongo import monitoring

from .._pool import jittered_lifetime
from ..config import PoolConfig
from ..stats import PoolStats
from .drivers.pymongo import retire

__all__ = ["CMAPListener", "CommandLogger"]

logger = logging.getLogger("connman.mongo")


class _Pool(Protocol):
    """What the listeners feed (`MongoPool`)."""

    config: PoolConfig
    counters: PoolStats

    def _emit(self, name: str, duration_ms: float = 0.0, reason: str = "") -> None: ...
    def connection_event(self, name: str, duration_ms: float = 0.0,
                         reason: str = "") -> None: ...


class CMAPListener(monitoring.ConnectionPoolListener):
    """Turns PyMongo's pool events into connman stats; thread-safe (Motor calls from threads)."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.lock = threading.Lock()
        self.open = 0
        self.in_use = 0
        self.deadlines: dict[tuple[Any, int], float] = {}
        self.marked: set[tuple[Any, int]] = set()
        self.ready: set[tuple[Any, int]] = set()
        self.changed: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def _signal(self) -> None:
        # Wake the warm-up waiting on the counts; Motor calls from its worker threads.
        waiter = self.changed
        if waiter is not None:
            loop, event = waiter
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(event.set)

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
        with self.lock:
            self.ready.add((event.address, event.connection_id))
        self._signal()
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
            self.ready.discard(key)
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
        self._signal()

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

    def retire_if_expired(self, address: Any, conn: Any) -> None:
        """At check-in: retire a connection past its lifetime (`drivers.pymongo.retire`).

        PyMongo's check-in then closes it as stale instead of putting it back, so `recycle`
        holds under steady load, where a connection is almost never seen idle.
        """
        if self.expired(address, conn.id, time.monotonic()):
            retire(conn)

    def expired(self, address: Any, conn_id: int, now: float) -> bool:
        """Whether this connection outlived its (jittered) lifetime; marks it if so."""
        key = (address, conn_id)
        with self.lock:
            deadline = self.deadlines.get(key)
            if deadline is None or now < deadline or key in self.marked:
                return False
            self.marked.add(key)
            return True


class CommandLogger(monitoring.CommandListener):
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
