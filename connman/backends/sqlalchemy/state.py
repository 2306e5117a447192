"""The SQL pool's state: the attributes every part of `SQLAlchemyPool` shares (set in one
`__init__`), the gate as its ledger sees it (`admitted`), the typed errors its deadlines raise,
the read-only rule, and the stranded-checkin repair SQLAlchemy < 2.0.58 needs."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ..._credentials import Credentials
from ..._pool import Pool
from ...config import PoolConfig
from ...errors import CheckoutTimeout, ConfigurationError, StatementTimeout
from ...stats import EventHub
from .._guard import Limit
from .._pooler import PoolerGuard
from .._reset import FULL_RESET
from .connect import _CONNECT
from .deadlines import _KILL
from .ledger import LedgerPool, Lifetime
from .options import engine_options, session_options
from .probes import _PROBES

logger = logging.getLogger("connman")


def _strands_checkins(version: str) -> bool:
    """Whether this SQLAlchemy leaves a record checked out when a cancellation cuts its checkin
    short (its issue #13699, fixed in 2.0.58 and in 2.1)."""
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit()) or "0"
        parts.append(int(digits))
    return tuple(parts) < (2, 0, 58)


STRANDS_CHECKINS = _strands_checkins(sqlalchemy.__version__)


class UnitHook(Protocol):
    """What `SQLAlchemyPool.bind()` joins a pool's units of work to: connman.testing's per-test
    binding (`connman.testing.binding.TestBinding`), kept out of the backend's hot path."""

    @property
    def pool(self) -> PoolState:
        """The pool whose binding it is (a replica pool shares its primary's)."""

    @property
    def active(self) -> bool:
        """Whether it holds a connection (an outer transaction is open)."""

    async def begin(self) -> AsyncSession:
        """A session for one unit of work, joined to the binding."""

    async def end(self, session: AsyncSession, error: BaseException | None) -> None:
        """End the unit of work `begin()` started."""

    async def begin_raw(self) -> tuple[Any, Any]:
        """A fast-path unit: (its handle for `end_raw`, the connection handed to the app)."""

    async def end_raw(self, handle: Any, error: BaseException | None) -> None:
        """End the fast-path unit `begin_raw()` started."""

    async def rollback(self) -> None:
        """Roll back everything and give the connection back (the pool is closing)."""


class PoolState(Pool):
    """What `SQLAlchemyPool`'s parts (events, fast path, units of work) share: its attributes and
    the helpers more than one of them calls. Not a pool on its own: `SQLAlchemyPool` is."""

    def __init__(self, name: str, config: PoolConfig, hub: EventHub) -> None:
        super().__init__(name, config, hub)
        self._options = engine_options(name, config)
        self._session_kw = session_options(name, config)
        self._engine: AsyncEngine | None = None
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self.connect_hooks: list[Callable[[Any, Any], None]] = []
        self._finish_timeout = config.connect_timeout + config.timeout
        self._ledger: LedgerPool | None = None
        """The engine's pool: the one list of this pool's connections (`ledger.LedgerPool`)."""
        self._lifetime = Lifetime(config.idle, config.pre_ping, self._stale)
        self._probe = _PROBES.get(config.driver_name)
        self._sqlite = config.driver_name == "aiosqlite"
        # psycopg's fast path runs in autocommit, as asyncpg's connections do; SQLAlchemy's
        # sessions need it off, so it is on only inside a fast-path unit of work.
        self._autocommit_fast = config.driver_name == "psycopg"
        self._autocommit = config.commit == "auto"
        # Drivers whose every query the fast path's proxy sees (asyncpg's connection methods,
        # the MySQL drivers' cursors); aiosqlite's `execute` calls are seen, but not the rows an
        # `async for` over its cursor reads on its thread.
        self._tracked = config.driver_name != "aiosqlite"
        self._binding: UnitHook | None = None
        self._full_reset = (FULL_RESET.get(config.driver_name)
                            if config.reset_on_return == "full" else None)
        self._silent_until = 0.0
        """Until then, closes do not wait for the server: one goodbye just went unanswered."""
        kill = _KILL.get(config.driver_name)
        # `statement_timeout` on the fast path's calls (asyncpg's methods, the MySQL drivers'
        # cursors, aiosqlite's execute calls and cursors).
        self._fast_limit = (
            Limit(config.statement_timeout, kill, self._statement_expired,
                  native=config.driver_name == "asyncpg")
            if config.statement_timeout is not None and kill is not None else None)
        self._pooler = (PoolerGuard(name, config.external_pooler)
                        if config.external_pooler is not None else None)
        """Warns once about session-level state behind a transaction-mode pooler."""
        self._stale_born = float("-inf")
        """Connections opened (`cm_born`, `time.monotonic()`) no later than then are discarded at
        their next checkout: a server refused a write as read-only (a demoted primary) then, on
        a connection not condemned already (`_refused_as_read_only`)."""
        self._committed: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        """Tasks whose current unit of work sent a COMMIT: a connection it loses later may have
        applied something, so its `ConnectionLost` gets no `Retry-After`."""
        self._credentials = (
            Credentials(name, config.credentials, config.connect_timeout, config.retry_after_s)
            if config.credentials is not None else None)
        """The `credentials` provider, called in each new connection's connect."""
        if self._credentials is not None and config.driver_name not in _CONNECT:
            raise ConfigurationError(
                f"pool {name!r}: credentials: not supported for driver {config.driver_name!r}",
                pool=name, field="credentials")
        self._connect_ms: dict[int, float] = {}
        """How long each new driver connection (by id) took to open, until its connect event."""

    # ------------------------------------------------------------------ deadlines
    def _statement_expired(self) -> StatementTimeout:
        return StatementTimeout(
            f"pool {self.name!r}: no answer from the server within statement_timeout="
            f"{self.config.statement_timeout:g}s; the connection was discarded and the unit of "
            "work rolled back", pool=self.name)

    def _ping_expired(self) -> CheckoutTimeout:
        return CheckoutTimeout(
            f"pool {self.name!r}: the server did not answer the pre-ping within connect_timeout="
            f"{self.config.connect_timeout:g}s; the connection was discarded",
            pool=self.name, retry_after=self.config.retry_after_s)

    def _connect_expired(self) -> CheckoutTimeout:
        return CheckoutTimeout(
            f"pool {self.name!r}: no connection to the server within connect_timeout="
            f"{self.config.connect_timeout:g}s", pool=self.name,
            retry_after=self.config.retry_after_s)

    def _refused_as_read_only(self, info: Any) -> None:
        """A connection's server refused a write as read-only: every connection opened until now
        is discarded (lazily, at its next checkout), so new ones follow the pool's URL to
        whichever server is primary now. A refusal on a connection already condemned says
        nothing new and moves nothing: refusals still arriving on old connections must not
        condemn the fresh ones to the new primary (that exhausted SQLAlchemy's two checkout
        attempts into a raw `InvalidRequestError`). `info`: the connection's record info
        (`PoolProxiedConnection.info`, `cm_born`), or None if unknown."""
        born = info.get("cm_born") if info is not None else None
        if born is not None and born <= self._stale_born:
            return
        self._stale_born = time.monotonic()
        logger.warning("connman: pool %r: the server refused a write as read-only; "
                       "discarding the pool's connections to it", self.name)

    def _stale(self, info: Any) -> bool:
        """Whether a connection (by its record info) was opened no later than one whose server
        refused a write as read-only."""
        born = info.get("cm_born")
        return born is not None and born <= self._stale_born

    def _kill(self, conn: Any) -> None:
        """Drop a driver connection now, without a word to the server."""
        kill = _KILL.get(self.config.driver_name)
        if kill is not None:
            try:
                kill(conn)
            except Exception:
                logger.debug("connman: pool %r: killing a connection failed", self.name,
                             exc_info=True)

    def _reclaim_stranded(self) -> int:
        """Give back to the ledger the records whose checkin a cancellation cut short.

        SQLAlchemy before 2.0.58 (its issue #13699): when a cancellation (a request cancelled
        while its connection was being reset, or a reset abandoned past its deadline) interrupts
        the reset of a connection being checked in, the pool invalidates the connection but never
        checks the record in, so the slot would be lost for the life of the process. Such a
        record is recognised by a closed proxy (`_counter` 0) still attached to it and no DBAPI
        connection; it is checked in empty, as SQLAlchemy 2.0.58 does. Runs only on the versions
        that need it (`STRANDS_CHECKINS`). Returns how many were given back.
        """
        ledger = self._ledger
        if not STRANDS_CHECKINS or ledger is None:
            return 0
        found = 0
        for rec in list(ledger.out):
            ref = rec.fairy_ref
            fairy = ref() if ref is not None else None
            if (fairy is None or rec.dbapi_connection is not None
                    or fairy._connection_record is not rec or fairy._counter > 0):
                continue
            fairy.dbapi_connection = None
            fairy._connection_record = None
            rec.checkin()
            found += 1
        if found:
            logger.info("connman: pool %r: %d connection(s) whose checkin was cancelled given "
                        "back to the pool (SQLAlchemy < 2.0.58)", self.name, found)
        return found

    # ------------------------------------------------------------------ the gate, for the ledger
    def admitted(self) -> int:
        """How many connections the ledger may have checked out now: the gate's slots held
        (leases and housekeeping reserves), plus the test binding's outer connection."""
        binding = self._binding
        return self._active + (1 if binding is not None and binding.pool is self else 0)

    def _require_ledger(self) -> LedgerPool:
        if self._ledger is None:
            raise RuntimeError(f"pool {self.name!r} is not open")
        return self._ledger

    def _require_engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError(f"pool {self.name!r} is not open")
        return self._engine
