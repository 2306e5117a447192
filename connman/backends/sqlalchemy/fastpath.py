"""The fast path (`connection()`) keeps the connections it gives back on a small LIFO stack of its own
instead of returning them through SQLAlchemy's pool: the next fast-path checkout then costs no
greenlet hop, no pool bookkeeping and no pre-ping round trip, which is what made it 3x slower than
asyncpg's own pool. Those connections stay checked out of SQLAlchemy's pool, so its bound on open
connections still holds; the stack gives one back whenever a session could otherwise wait for it.

Its units of work: `_begin_raw`/`_end_raw` (checkout from the stack or SQLAlchemy's pool, the
usability check, check-in with rollback and reset, discard with a counted reason).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from sqlalchemy.util import greenlet_spawn

from ..._pool import finish
from ...errors import ConnectionLost, ServerUnavailable, StatementTimeout
from .. import _outage
from .._guard import FastConnection
from .._guard import driver_timeout as _driver_timeout
from ..drivers import psycopg as _psycopg
from .probes import ALIVE_BYPASS_S, _may_be_disconnected
from .state import PoolState

logger = logging.getLogger("connman")


class FastPathMixin(PoolState):
    """`SQLAlchemyPool`'s fast path (`manager.connection()`) and its idle stack `_hot`."""

    async def _finish_checkin(self, step: Callable[[], Any]) -> None:
        """Run a fast-path connection's `close()`/`invalidate()` in SQLAlchemy's greenlet (see
        `finish`); if a cancellation or the deadline cut into it, give back a stranded record."""
        try:
            clean = await finish(partial(greenlet_spawn, step), self._finish_timeout, self.name)
        except BaseException:
            self._reclaim_stranded()
            raise
        if not clean:
            self._reclaim_stranded()

    async def _begin_raw(self) -> tuple[Any, Any]:
        if self._binding is not None:  # connman.testing: a savepoint on the test's connection
            return await self._binding.begin_raw()
        try:
            fairy, conn = await self._checkout_raw()
        except Exception as exc:
            # A refused connect is typed in the connect; this types what fails after it (the
            # dialect's setup queries, a pooler that refuses at the first query).
            typed = _outage.typed_error(self, exc, "connect")
            _outage.count(self, typed or exc)
            if typed is not None:
                raise typed from exc
            raise
        if self._autocommit_fast and not _psycopg.autocommit(conn):  # not from the hot stack
            try:
                await _psycopg.enter_autocommit(conn)
            except BaseException as exc:
                await self._checkin_raw(fairy, exc)
                raise
        proxy = FastConnection(self.name, conn, self._fast_limit,
                               self._pooler.check if self._pooler is not None else None)
        return (fairy, proxy), proxy

    async def _checkout_raw(self) -> tuple[Any, Any]:
        hot = self._hot
        while hot:
            fairy, conn, since = hot.pop()
            reason = self._unusable(fairy, conn, since)
            if reason is None:
                return fairy, conn
            await self._discard(fairy, reason)
        fairy = await self._require_engine().raw_connection()
        return fairy, fairy.driver_connection

    def _unusable(self, fairy: Any, conn: Any, since: float) -> str | None:
        """Why a fast-path connection cannot be handed out as is (None: it can)."""
        probe = self._probe
        assert probe is not None
        if probe.closed(conn):
            return "lost"
        rec = fairy._connection_record
        now = time.monotonic()
        deadline = rec.info.get("cm_deadline")
        if deadline is not None and now >= deadline:
            return "recycle"
        cfg = self.config
        if cfg.idle is not None and now - since > cfg.idle:
            return "idle_close"
        if fairy._pool._invalidate_time > rec.starttime or self._stale(rec.info):
            return "lost"  # SQLAlchemy saw the server go away meanwhile, or turn read-only
        if cfg.pre_ping and now - since > ALIVE_BYPASS_S:
            return "ping"  # not used lately: let SQLAlchemy's checkout ping it
        return None

    async def _make_room(self) -> None:
        """Before checking out past the gate (ping, server_info): free a connection the fast path
        holds idle if SQLAlchemy's pool has none, so that checkout cannot wait on them."""
        pool: Any = self._engine.sync_engine.pool if self._engine is not None else None
        if self._hot and pool is not None and not pool.checkedin():
            await self._discard(self._hot.pop(0)[0], reason=None)

    async def _trim(self, pool: Any, size: int) -> None:
        """While the fast path holds more than `size` idle, give the oldest back to SQLAlchemy.

        Only when nobody waits. They stay open in SQLAlchemy's queue, which has room for `size +
        overflow`, for sessions to reuse; the maintenance closes them once idle for
        `overflow_idle`. Closing them here instead would make the next burst reconnect.
        """
        hot = self._hot
        while len(hot) > size and not self._nwaiting:
            await self._discard(hot.pop(0)[0], reason=None)

    async def _discard(self, fairy: Any, reason: str | None) -> None:
        """Hand a fast-path connection back to SQLAlchemy's pool, or close it for `reason`."""
        if (reason is None or reason == "ping") and self._autocommit_fast and fairy.is_valid:
            # psycopg: the fast path's connections stay in autocommit while it holds them
            # (no switch per unit of work); SQLAlchemy's sessions expect it off.
            try:
                await _psycopg.leave_autocommit(fairy.driver_connection)
            except Exception:
                reason = "lost"
        if reason is None or reason == "ping":
            step = fairy.close
        else:
            fairy.info["cm_reason"] = reason
            step = fairy.invalidate
        await self._finish_checkin(step)

    async def _end_raw(self, handle: Any, error: BaseException | None) -> None:
        if self._binding is not None:  # connman.testing
            return await self._binding.end_raw(handle, error)
        fairy, proxy = handle
        typed = None
        if isinstance(error, Exception):
            probe = self._probe
            gone = probe is not None and probe.closed(fairy.driver_connection)
            typed = _outage.typed_error(self, error, "statement", disconnected=gone)
        if typed is None:
            if (isinstance(error, ConnectionLost) or (isinstance(error, ServerUnavailable)
                                                      and error.kind == "read_only")) and (
                    error.pool == self.name):
                # Typed already (by an inner unit of this pool): discard this connection too.
                proxy._cm_detach()
                self._terminate(fairy, "lost")
                return None
            return await self._end_raw_untyped(fairy, proxy, error)
        if isinstance(typed, ConnectionLost):
            # The fast path has no unit-wide transaction (asyncpg autocommits each statement
            # outside `conn.transaction()`; the others' `commit()` is the app's): whether
            # something was applied before the loss is unknown.
            typed.retry_after = None
        _outage.count(self, typed)
        if isinstance(typed, ConnectionLost) or (isinstance(typed, ServerUnavailable)
                                                 and typed.kind == "read_only"):
            if isinstance(typed, ServerUnavailable):
                self._refused_as_read_only(fairy.info)
            proxy._cm_detach()
            self._terminate(fairy, "lost")  # never handed out again
        else:
            await self._end_raw_untyped(fairy, proxy, error)
        raise typed from error

    async def _end_raw_untyped(self, fairy: Any, proxy: Any, error: BaseException | None) -> None:
        if proxy._cm_detach() or (isinstance(error, Exception) and not self._tracked):
            # An operation is still running on it (a task the `async with` did not wait for), or
            # may be: aiosqlite queues queries on its thread through objects the proxy does not
            # see, so an error exit could leave one queued. Its state is unknown: terminate it,
            # never hand it out again busy. One that timed out counts as lost, as elsewhere.
            self._terminate(fairy, "lost" if isinstance(error, StatementTimeout) else "close")
            return
        await self._checkin_raw(fairy, error)

    async def _reset_raw(self, fairy: Any, conn: Any) -> None:
        """`reset_on_return="full"` on the fast path: the driver's reset, then the pool's
        `on_connect` hooks again (they run in SQLAlchemy's greenlet, as at connect)."""
        assert self._full_reset is not None
        await self._full_reset(conn)
        if self.connect_hooks:
            def rerun() -> None:
                for hook in self.connect_hooks:
                    hook(fairy.dbapi_connection, fairy._connection_record)
            await greenlet_spawn(rerun)

    def _terminate(self, fairy: Any, reason: str) -> None:
        """Invalidate a connection outside SQLAlchemy's greenlet: the driver connection is closed
        at once, without a round trip, and the record goes back to the pool empty."""
        if fairy.is_valid:
            fairy.info["cm_reason"] = reason
            fairy.invalidate()
        else:
            fairy.close()

    async def _checkin_raw(self, fairy: Any, error: BaseException | None) -> None:
        probe = self._probe
        if (probe is not None and self._engine is not None and not self._closing
                and fairy.is_valid):
            conn = fairy.driver_connection
            pool: Any = self._engine.sync_engine.pool  # the fairy's pool (public, not fairy._pool)
            if not isinstance(error, Exception) and error is not None:
                # Cancelled, perhaps mid-query: this connection's protocol state is unknown.
                # Invalidating it also interrupts a SQLite query (the invalidate event).
                await self._discard(fairy, "close")
                return
            if _driver_timeout(error):
                # asyncpg's command_timeout: kill it first, or closing it would wait for the
                # server to answer the query's cancellation.
                self._kill(conn)
                await self._discard(fairy, "lost")
                return
            if probe.closed(conn) or (error is not None and _may_be_disconnected(error)):
                await self._discard(fairy, "lost")
                return
            if probe.in_transaction(conn):
                # What SQLAlchemy's reset-on-return does: roll back what the caller left open.
                try:
                    await finish(partial(probe.rollback, conn), self._finish_timeout, self.name)
                except Exception:
                    await self._discard(fairy, "lost")
                    return
                if probe.closed(conn) or probe.in_transaction(conn):
                    await self._discard(fairy, "lost")
                    return
            if self._full_reset is not None:
                try:
                    await finish(partial(self._reset_raw, fairy, conn), self._finish_timeout,
                                 self.name)
                except Exception:
                    await self._discard(fairy, "lost")
                    return
            self._hot.append((fairy, conn, time.monotonic()))  # psycopg: still in autocommit
            size = self.config.size
            if not self._nwaiting and len(self._hot) + pool.checkedin() > size:
                await self._trim(pool, size)
            return
        if self._autocommit_fast and fairy.is_valid and _psycopg.autocommit(fairy.driver_connection):
            # Not made ready for sessions (the pool is closing): never hand it to one.
            await self._discard(fairy, "close")
            return
        await self._finish_checkin(fairy.close)
        await self._close_if_disposed()

    async def _ping(self) -> float:
        """One `SELECT 1` on a pooled driver connection; latency in milliseconds."""
        probe = self._probe
        assert probe is not None
        t0 = time.perf_counter()
        fairy, conn = await self._checkout_raw()
        error: BaseException | None = None
        try:
            await probe.ping(conn)
        except BaseException as exc:
            error = exc
            raise
        finally:
            await self._checkin_raw(fairy, error)
        return (time.perf_counter() - t0) * 1000
