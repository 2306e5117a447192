"""SQLAlchemy's engine and pool events, as connman's rules and stats: lifetime (recycle with
jitter, idle, a read-only server's connections) checked at checkout, counted reasons for every
closed connection, typed errors (`handle_error`), deadlines on the pre-ping and the close (with the
pre-ping bypass window) and on every statement, and concurrent use of one session refused."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

from ..._pool import jittered_lifetime
from ...errors import (
    ConcurrentUse,
    ConnectionLost,
    ConnmanError,
    ServerUnavailable,
    StatementTimeout,
)
from .. import _outage
from .._guard import Deadline as _Deadline
from .._guard import driver_timeout as _driver_timeout
from ..drivers import psycopg as _psycopg
from ..drivers import sqlite as _sqlite
from .deadlines import _EMULATED_STATEMENT_TIMEOUT, _KILL, _bound_statements, _call_within, _driver_conn
from .ledger import LedgerPool
from .state import PoolState

logger = logging.getLogger("connman")


class EventsMixin(PoolState):
    """`SQLAlchemyPool`'s listeners on its engine and pool, installed by `_install_events`."""

    def _refuse_overlapping_executes(self, dialect: Any) -> None:
        """Refuse a statement on a connection that is running another: `ConcurrentUse`.

        Two tasks on one session (`gather` over one `AsyncSession`) send their statements on
        one connection. SQLAlchemy's asyncio adapters queue them on a mutex and aiosqlite runs
        them one after the other on its thread, so some drivers would not even fail; the session's
        state is shared all the same. Detected here for every driver, before the driver sees the
        second statement. (Units of work joined to a test's outer connection take turns in
        `connman.testing.binding.TestBinding`, so they never overlap here.)
        """
        running: set[int] = set()
        name = self.name

        def guarded(call: Callable[..., Any]) -> Callable[..., Any]:
            def run(cursor: Any, *args: Any) -> Any:
                # The execution context (the last argument SQLAlchemy passes) names the
                # `Connection` the statement runs on: one per session, whichever task sends it.
                context = args[-1] if args else None
                source = getattr(context, "root_connection", None)
                key = id(source if source is not None else cursor)
                if key in running:
                    raise ConcurrentUse(
                        f"pool {name!r}: two tasks used one session at the same time (a "
                        "statement was sent while another was running on its connection); a "
                        "session is one unit of work on one connection: await its operations "
                        f"in turn, or give each task its own `async with manager.session({name!r})`",
                        pool=name)
                running.add(key)
                try:
                    return call(cursor, *args)
                finally:
                    running.discard(key)
            return run

        dialect.do_execute = guarded(dialect.do_execute)
        dialect.do_execute_no_params = guarded(dialect.do_execute_no_params)
        dialect.do_executemany = guarded(dialect.do_executemany)

    def _bound_calls(self, sync_engine: Any) -> None:
        """Put a deadline on every driver call that waits for the server's answer.

        Statements (`statement_timeout`): asyncpg natively; the other drivers through the
        dialect's execute events and its `do_commit`/`do_rollback`. The pre-ping and the graceful
        close get `connect_timeout`. An expired statement raises `StatementTimeout`, an expired
        pre-ping `CheckoutTimeout`; either way the connection is invalidated (discarded).
        """
        cfg = self.config
        kill = _KILL.get(cfg.driver_name)
        if kill is None:
            return
        dialect = sync_engine.dialect
        seconds = cfg.statement_timeout
        if seconds is not None and cfg.driver_name in _EMULATED_STATEMENT_TIMEOUT:
            _bound_statements(sync_engine, dialect, seconds, kill, self._statement_expired)
        ping, close = dialect.do_ping, dialect.do_close
        recent = self._require_ledger().recent
        probe = self._probe
        lifetime = self._lifetime

        def do_ping(dbapi_conn: Any) -> bool:
            # HikariCP's aliveBypassWindowMs: a connection checked in within the last
            # ALIVE_BYPASS_S was alive then; one round trip fewer per unit of work in a burst.
            # Unless its server hung up since (a restart): then the ping runs, fails at once,
            # and SQLAlchemy replaces the pool's connections, as without the bypass.
            if (not lifetime.needs_ping(recent.get(id(dbapi_conn)), time.monotonic())
                    and probe is not None and not probe.closed(_driver_conn(dbapi_conn))):
                return True
            return bool(_call_within(cfg.connect_timeout, kill, _driver_conn(dbapi_conn),
                                     self._ping_expired, partial(ping, dbapi_conn)))

        dialect.do_ping = do_ping

        def do_close(dbapi_conn: Any) -> None:
            # Shutdown and overflow closes say goodbye to the server (asyncpg waits for it to
            # hang up); a frozen one never answers. Once one goodbye went unanswered, the next
            # ones are not waited for: dispose() closes connections one after the other.
            driver_conn = _driver_conn(dbapi_conn)
            if time.monotonic() < self._silent_until:
                with contextlib.suppress(Exception):
                    kill(driver_conn)
            deadline = _Deadline(cfg.connect_timeout, kill, driver_conn)
            try:
                close(dbapi_conn)
            except Exception:
                if not deadline.fired:
                    raise
            finally:
                deadline.cancel()
            if deadline.fired:  # killed, whether the close then failed or returned
                self._silent_until = time.monotonic() + cfg.connect_timeout
                logger.info("connman: pool %r: the server did not answer a close within %gs; "
                            "the connection was dropped", self.name, cfg.connect_timeout)

        dialect.do_close = do_close

        @event.listens_for(sync_engine, "handle_error")
        def on_error(ctx: Any) -> Exception | None:
            exc = ctx.original_exception
            if isinstance(exc, StatementTimeout):
                replace = None
            elif seconds is not None and _driver_timeout(exc) and ctx.connection is not None:
                # asyncpg's command_timeout: it would wait for the server to cancel the query.
                fairy = ctx.connection.connection if not ctx.connection.invalidated else None
                if fairy is not None:
                    with contextlib.suppress(Exception):
                        kill(_driver_conn(fairy))
                replace = self._statement_expired()
            else:
                return None
            # Its protocol state is unknown: discard this connection, not the whole pool.
            ctx.is_disconnect = True
            ctx.invalidate_pool_on_disconnect = False
            return replace

    def _typed_errors(self, sync_engine: Any) -> None:
        """Raise a server's failure as connman's typed error, still of SQLAlchemy's class.

        Runs after `_bound_calls`' handler (which types statement timeouts). A refused, full or
        read-only server is `ServerUnavailable`, a connection the server ended in use is
        `ConnectionLost` (see `_outage`); each keeps the class of SQLAlchemy's exception (or of
        the driver's, for errors SQLAlchemy does not wrap). A read-only refusal discards the
        connection and, lazily at their next checkout, every connection opened before it.
        """
        committed = self._committed

        @event.listens_for(sync_engine, "commit")
        def on_commit(conn: Any) -> None:
            task = asyncio.current_task()
            if task is not None:
                committed.add(task)

        @event.listens_for(sync_engine, "handle_error")
        def typed(ctx: Any) -> Exception | None:
            if ctx.is_pre_ping or not isinstance(ctx.original_exception, Exception):
                # Pre-ping: SQLAlchemy reconnects (a failed reconnect comes here again).
                # A cancellation stays a cancellation.
                return None
            wrapper = ctx.sqlalchemy_exception
            # `chained_exception` (public) is only set once an earlier handler returned one.
            error = getattr(ctx, "chained_exception", None) or ctx.original_exception
            if isinstance(error, ConnmanError):
                # Typed already (the connect, a statement deadline): keep SQLAlchemy's class too,
                # or the driver's when SQLAlchemy did not wrap it.
                cause = wrapper if wrapper is not None else error.__cause__
                if cause is None or isinstance(cause, ConnmanError):
                    return None
                dbapi = ctx.dialect.loaded_dbapi
                if wrapper is None and isinstance(cause, dbapi.Error):
                    # connman's error is no DBAPI error, so SQLAlchemy did not wrap it: wrap its
                    # driver cause as SQLAlchemy wraps the driver's own errors, so the class an
                    # app catches on a session today (`sqlalchemy.exc.OperationalError` for a
                    # statement the server cut short) still catches it.
                    cause = sa_exc.DBAPIError.instance(
                        ctx.statement, ctx.parameters, cause, dbapi.Error, dialect=ctx.dialect)
                return _outage.driver_classed(error, cause)
            phase: _outage.Phase = ("connect" if ctx.connection is None else
                                    "commit" if ctx.statement is None else "statement")
            typed = _outage.typed_error(self, ctx.original_exception, phase, wrapper,
                                        disconnected=ctx.is_disconnect and phase != "connect")
            if typed is None:
                return None
            if isinstance(typed, ConnectionLost) or (
                    isinstance(typed, ServerUnavailable) and typed.kind == "read_only"):
                ctx.is_disconnect = True  # never hand this connection out again
                if isinstance(typed, sa_exc.DBAPIError):
                    typed.connection_invalidated = True
            if isinstance(typed, ServerUnavailable) and typed.kind == "read_only":
                ctx.invalidate_pool_on_disconnect = False  # done lazily by _refused_as_read_only
                self._refused_as_read_only(_record_info(ctx.connection))
            return typed

    # ------------------------------------------------------------------ events -> stats
    def _install_events(self, engine: AsyncEngine) -> None:
        sync_engine = engine.sync_engine
        pool = sync_engine.pool
        cfg = self.config

        sqlite = self._sqlite
        assert isinstance(pool, LedgerPool)
        pool.gate = self
        pool.lifetime = self._lifetime
        self._ledger = pool
        self._refuse_overlapping_executes(sync_engine.dialect)
        if cfg.driver_name == "psycopg":
            # SQLAlchemy terminates a psycopg connection by awaiting its close(): outside its
            # greenlet (connman discarding a connection) that fails and leaves it open.
            def do_terminate(dbapi_connection: Any) -> None:
                _psycopg.terminate(_driver_conn(dbapi_connection))

            sync_engine.dialect.do_terminate = do_terminate  # type: ignore[method-assign]
        self._bound_calls(sync_engine)
        self._typed_errors(sync_engine)
        guard = self._pooler
        if guard is not None:
            @event.listens_for(sync_engine, "before_cursor_execute")
            def pooler_check(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
                guard.check(statement)
        connect_ms = self._connect_ms
        kill = _KILL.get(cfg.driver_name)
        if kill is not None:
            bounded_pool = pool

            def setup_expired(exc: BaseException, kills: int) -> Exception | None:
                if isinstance(exc, ConnmanError):
                    return None
                if _driver_timeout(exc) or bounded_pool.setup_kills != kills:
                    return self._connect_expired()
                # The dialect's setup queries after the connect (a pooler that answers the
                # login, then fails the first query): nothing of the request ran.
                return _outage.typed_error(self, exc, "connect")

            pool.setup_expired = setup_expired

            def killed_in_setup(conn: Any) -> None:
                bounded_pool.setup_kills += 1
                kill(conn)

            @event.listens_for(pool, "connect", insert=True)
            def arm_setup(dbapi_con: Any, rec: Any) -> None:
                # Runs before the dialect's own setup queries; our on_connect, after them,
                # disarms it. If the setup fails, SQLAlchemy drops the connection unclosed:
                # the deadline then closes it.
                rec.info["cm_setup"] = _Deadline(cfg.connect_timeout, killed_in_setup,
                                                 _driver_conn(dbapi_con))

        @event.listens_for(pool, "connect")
        def on_connect(dbapi_con: Any, rec: Any) -> None:
            setup = rec.info.pop("cm_setup", None)
            if setup is not None:
                setup.cancel()
            now = time.monotonic()
            rec.info["cm_born"] = now
            if cfg.recycle is not None:
                rec.info["cm_deadline"] = now + jittered_lifetime(cfg.recycle, cfg.recycle_jitter)
            self._emit("connect", connect_ms.pop(id(_driver_conn(dbapi_con)), 0.0))

        for hook in self.connect_hooks:
            event.listen(pool, "connect", hook)

        lifetime = self._lifetime
        autocommit_fast = self._autocommit_fast

        @event.listens_for(pool, "checkout")
        def on_checkout(dbapi_con: Any, rec: Any, proxy: Any) -> None:
            # The lifetime rules the fast path asks too (`ledger.Lifetime`). A connection opened
            # before its server refused a write as read-only (a demoted primary) reconnects,
            # through the pool's URL, to whichever server is primary now.
            reason = lifetime.expired(rec, time.monotonic())
            if reason is not None:
                rec.info["cm_reason"] = reason
                raise sa_exc.DisconnectionError(f"connman: connection to discard ({reason})")
            if autocommit_fast:
                # psycopg: a connection the fast path used last is still in autocommit (it
                # stays so while the fast path takes it again and again); sessions need it off.
                try:
                    await_only(_psycopg.leave_autocommit(_driver_conn(dbapi_con)))
                except Exception as exc:
                    rec.info["cm_reason"] = "lost"
                    raise sa_exc.DisconnectionError("connman: connection broken") from exc

        recent = pool.recent

        full_reset = self._full_reset
        if full_reset is not None:
            hooks = self.connect_hooks

            @event.listens_for(pool, "reset")
            def on_reset(dbapi_con: Any, rec: Any, reset_state: Any) -> None:
                if reset_state.terminate_only or not reset_state.asyncio_safe:
                    return  # being closed, or collected by the GC: nothing to reset
                # Through the adapter first, so SQLAlchemy's view of the transaction stays true;
                # an error here makes SQLAlchemy invalidate the connection instead.
                dbapi_con.rollback()
                await_only(full_reset(dbapi_con.driver_connection))
                for hook in hooks:
                    hook(dbapi_con, rec)

        @event.listens_for(pool, "invalidate")
        def on_invalidate(dbapi_con: Any, rec: Any, error: BaseException | None) -> None:
            rec.info.setdefault("cm_reason", "lost")
            recent.pop(id(dbapi_con), None)
            if sqlite and dbapi_con is not None:
                # Invalidated mid-query (a cancelled request): stop the query, so the close that
                # follows runs now rather than after it, and the file handle goes with it.
                try:
                    _sqlite.interrupt(getattr(dbapi_con, "driver_connection", dbapi_con))
                except Exception:
                    logger.debug("connman: pool %r: interrupt failed", self.name, exc_info=True)

        @event.listens_for(pool, "close")
        def on_close(dbapi_con: Any, rec: Any) -> None:
            recent.pop(id(dbapi_con), None)
            info = rec.info
            reason = info.pop("cm_reason", None)
            if reason is None:
                deadline = info.get("cm_deadline")
                if deadline is not None and time.monotonic() >= deadline:
                    reason = "recycle"  # SQLAlchemy's own pool_recycle got there first
                elif pool.invalidated() > rec.starttime:
                    reason = "lost"  # the whole pool was invalidated (server restarted)
                else:
                    reason = "close"
            self.connection_event(reason)


def _record_info(connection: Any) -> Any:
    """The pool record's `info` of a SQLAlchemy `Connection` (public: `PoolProxiedConnection.info`),
    or None if it has none any more."""
    try:
        return connection.connection.info if connection is not None else None
    except Exception:  # closed or invalidated meanwhile
        return None
