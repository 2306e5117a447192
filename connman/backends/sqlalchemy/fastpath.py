"""The fast path (`connection()`): a driver connection straight from the ledger, without a
SQLAlchemy checkout. It takes the most recently returned record off the one idle stack
(`LedgerPool.take_idle`, no greenlet hop, no pool bookkeeping, no pre-ping round trip when the
connection was used within the bypass window) and gives it back to the same stack, where sessions
find it too. Only a new connection is opened in SQLAlchemy's greenlet (its connect events).

Its units of work: `_begin_raw`/`_end_raw` (checkout with the lifetime rules, check-in with
rollback and reset, discard with a counted reason).
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Any

from sqlalchemy.util import greenlet_spawn

from ..._pool import finish
from ...errors import ConnectionLost, ServerUnavailable, StatementTimeout
from .. import _outage
from .._guard import FastConnection
from .._guard import driver_timeout as _driver_timeout
from ..drivers import psycopg as _psycopg
from .probes import _may_be_disconnected
from .state import PoolState

logger = logging.getLogger("connman")


class FastPathMixin(PoolState):
    """`SQLAlchemyPool`'s fast path (`manager.connection()`), on the ledger's records."""

    async def _begin_raw(self) -> tuple[Any, Any]:
        if self._binding is not None:  # connman.testing: a savepoint on the test's connection
            return await self._binding.begin_raw()
        try:
            rec, conn = await self._checkout_raw()
        except Exception as exc:
            # A refused connect is typed in the connect; this types what fails after it (the
            # dialect's setup queries, a pooler that refuses at the first query).
            typed = _outage.typed_error(self, exc, "connect")
            _outage.count(self, typed or exc)
            if typed is not None:
                raise typed from exc
            raise
        if self._autocommit_fast and not _psycopg.autocommit(conn):  # new, or a session's last
            try:
                await _psycopg.enter_autocommit(conn)
            except BaseException as exc:
                await self._checkin_raw(rec, exc)
                raise
        proxy = FastConnection(self.name, conn, self._fast_limit,
                               self._pooler.check if self._pooler is not None else None)
        return (rec, proxy), proxy

    async def _checkout_raw(self) -> tuple[Any, Any]:
        """A checked-out record and its driver connection, for a caller holding a gate slot."""
        ledger = self._require_ledger()
        while (rec := ledger.take_idle()) is not None:
            conn = rec.driver_connection
            reason = self._unusable(rec, conn)
            if reason is None:
                return rec, conn
            if reason == "ping":
                if await self._pinged(rec, conn):
                    return rec, conn
                continue  # discarded; older connections are replaced as they come up
            await self._discard(rec, reason)
        rec = await greenlet_spawn(ledger.open_new)
        return rec, rec.driver_connection

    def _unusable(self, rec: Any, conn: Any) -> str | None:
        """Why a record's connection cannot be handed out as is: a counted close reason, "ping"
        (not used within the bypass window: ask the server first), or None (it can)."""
        probe = self._probe
        assert probe is not None
        assert self._ledger is not None
        if probe.closed(conn):
            return "lost"
        now = time.monotonic()
        reason = self._lifetime.expired(rec, now, self._ledger.invalidated())
        if reason is not None:
            return reason
        if self._lifetime.needs_ping(rec.info.get("cm_in"), now):
            return "ping"
        return None

    async def _pinged(self, rec: Any, conn: Any) -> bool:
        """The pre-ping of a fast-path checkout, as SQLAlchemy's for sessions: True if the server
        answered within `connect_timeout`. A failed ping discards the connection and marks every
        connection opened before it for replacement (False); a silent server raises
        `CheckoutTimeout` (the connection is dropped)."""
        probe = self._probe
        assert probe is not None
        assert self._ledger is not None
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                await probe.ping(conn)
        except TimeoutError:
            self._kill(conn)
            self._terminate(rec, "lost")
            raise self._ping_expired() from None
        except Exception:
            self._terminate(rec, "lost")
            self._ledger.invalidate_older()
            return False
        except BaseException:
            self._terminate(rec, "close")  # cancelled mid-ping: its protocol state is unknown
            raise
        return True

    async def _discard(self, rec: Any, reason: str) -> None:
        """Close a fast-path record's connection for `reason` (a counted close reason) in
        SQLAlchemy's greenlet (a graceful close, within the finish deadline), and give the
        record back to the ledger empty."""
        rec.info["cm_reason"] = reason
        try:
            await finish(partial(greenlet_spawn, rec.invalidate), self._finish_timeout, self.name)
        finally:
            self._terminate(rec, reason)  # cut short or abandoned: dropped without a round trip

    async def _end_raw(self, handle: Any, error: BaseException | None) -> None:
        if self._binding is not None:  # connman.testing
            return await self._binding.end_raw(handle, error)
        rec, proxy = handle
        typed = None
        if isinstance(error, Exception):
            probe = self._probe
            gone = probe is not None and probe.closed(rec.driver_connection)
            typed = _outage.typed_error(self, error, "statement", disconnected=gone)
        if typed is None:
            if (isinstance(error, ConnectionLost) or (isinstance(error, ServerUnavailable)
                                                      and error.kind == "read_only")) and (
                    error.pool == self.name):
                # Typed already (by an inner unit of this pool): discard this connection too.
                proxy._cm_detach()
                self._terminate(rec, "lost")
                return None
            return await self._end_raw_untyped(rec, proxy, error)
        if isinstance(typed, ConnectionLost):
            # The fast path has no unit-wide transaction (asyncpg autocommits each statement
            # outside `conn.transaction()`; the others' `commit()` is the app's): whether
            # something was applied before the loss is unknown.
            typed.retry_after = None
        _outage.count(self, typed)
        if isinstance(typed, ConnectionLost) or (isinstance(typed, ServerUnavailable)
                                                 and typed.kind == "read_only"):
            if isinstance(typed, ServerUnavailable):
                self._refused_as_read_only(rec.info)
            proxy._cm_detach()
            self._terminate(rec, "lost")  # never handed out again
        else:
            await self._end_raw_untyped(rec, proxy, error)
        raise typed from error

    async def _end_raw_untyped(self, rec: Any, proxy: Any, error: BaseException | None) -> None:
        if proxy._cm_detach() or (isinstance(error, Exception) and not self._tracked):
            # An operation is still running on it (a task the `async with` did not wait for), or
            # may be: aiosqlite queues queries on its thread through objects the proxy does not
            # see, so an error exit could leave one queued. Its state is unknown: terminate it,
            # never hand it out again busy. One that timed out counts as lost, as elsewhere.
            self._terminate(rec, "lost" if isinstance(error, StatementTimeout) else "close")
            return
        await self._checkin_raw(rec, error)

    async def _reset_raw(self, rec: Any, conn: Any) -> None:
        """`reset_on_return="full"` on the fast path: the driver's reset, then the pool's
        `on_connect` hooks again (they run in SQLAlchemy's greenlet, as at connect)."""
        assert self._full_reset is not None
        await self._full_reset(conn)
        if self.connect_hooks:
            def rerun() -> None:
                for hook in self.connect_hooks:
                    hook(rec.dbapi_connection, rec)
            await greenlet_spawn(rerun)

    def _terminate(self, rec: Any, reason: str) -> None:
        """Invalidate a record's connection outside SQLAlchemy's greenlet (the driver connection
        is closed at once, without a round trip) and give the record back to the ledger empty."""
        if rec.dbapi_connection is not None:
            rec.info["cm_reason"] = reason
            try:
                rec.invalidate()
            finally:
                if rec.dbapi_connection is not None:  # the close failed: never hand it out
                    self._kill(rec.driver_connection)
                    rec.dbapi_connection = None
        ledger = self._ledger
        if ledger is not None:
            ledger.give_back(rec)

    async def _checkin_raw(self, rec: Any, error: BaseException | None) -> None:
        """Give a fast-path record back to the ledger: rolled back (and reset, with
        `reset_on_return="full"`), or discarded with a counted reason when its state is unknown."""
        probe = self._probe
        if rec.dbapi_connection is None or probe is None or self._ledger is None:
            self._terminate(rec, "close")
            return
        conn = rec.driver_connection
        if not isinstance(error, Exception) and error is not None:
            # Cancelled, perhaps mid-query: this connection's protocol state is unknown.
            # Invalidating it also interrupts a SQLite query (the invalidate event).
            await self._discard(rec, "close")
            return
        if _driver_timeout(error):
            # asyncpg's command_timeout: kill it first, or closing it would wait for the
            # server to answer the query's cancellation.
            self._kill(conn)
            await self._discard(rec, "lost")
            return
        if probe.closed(conn) or (error is not None and _may_be_disconnected(error)):
            await self._discard(rec, "lost")
            return
        if probe.in_transaction(conn):
            # What SQLAlchemy's reset-on-return does: roll back what the caller left open.
            try:
                await finish(partial(probe.rollback, conn), self._finish_timeout, self.name)
            except Exception:
                await self._discard(rec, "lost")
                return
            except BaseException:
                # Cancelled meanwhile: `finish` ran the rollback again shielded and re-raises
                # the cancel; the connection's state is unknown, and it must still go back.
                self._terminate(rec, "close")
                raise
            if probe.closed(conn) or probe.in_transaction(conn):
                await self._discard(rec, "lost")
                return
        if self._full_reset is not None:
            try:
                await finish(partial(self._reset_raw, rec, conn), self._finish_timeout,
                             self.name)
            except Exception:
                await self._discard(rec, "lost")
                return
            except BaseException:
                self._terminate(rec, "close")  # cancelled mid-reset, as above
                raise
        self._ledger.give_back(rec)  # psycopg: still in autocommit, left at a session's checkout

    async def _ping(self) -> float:
        """One `SELECT 1` on a pooled driver connection; latency in milliseconds."""
        probe = self._probe
        assert probe is not None
        t0 = time.perf_counter()
        rec, conn = await self._checkout_raw()
        error: BaseException | None = None
        try:
            await probe.ping(conn)
        except BaseException as exc:
            error = exc
            raise
        finally:
            await self._checkin_raw(rec, error)
        return (time.perf_counter() - t0) * 1000
