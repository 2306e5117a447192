"""Maps the schema to `create_async_engine` keywords, feeds the stats from pool events, and emulates
what SQLAlchemy lacks: an idle timeout, lifetime jitter (both checked at checkout, where
`pool_recycle` is checked) and counted reasons for every closed connection.

`SQLAlchemyPool` composes the package's parts (being split out of this module).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.util import greenlet_spawn

from ..._pool import finish, shielded
from ...errors import ConcurrentUse, ConnectionLost, ServerUnavailable, StatementTimeout
from .. import _outage
from .._guard import EndedBind, FastConnection
from .._guard import driver_timeout as _driver_timeout
from ..drivers import psycopg as _psycopg
from .connect import _creator
from .events import EventsMixin
from .probes import ALIVE_BYPASS_S, _may_be_disconnected
from .state import UnitHook

logger = logging.getLogger("connman")


def _is_concurrency_error(exc: BaseException) -> bool:
    """SQLAlchemy's own word that two tasks used one session at once."""
    return isinstance(exc, sa_exc.IllegalStateChangeError) or (
        isinstance(exc, sa_exc.InvalidRequestError) and getattr(exc, "code", None) == "isce")


def _changing(session: Any) -> bool:
    """Whether a task is inside a state change of this (sync) session now, such as checking a
    connection out for it: SQLAlchemy's `_StateChange` marks that on each transaction."""
    trans = session._transaction
    while trans is not None:
        if getattr(trans._next_state, "name", "") == "CHANGE_IN_PROGRESS":
            return True
        trans = trans._parent
    return False


def _session_connections(session: Any) -> list[Any]:
    """The SQLAlchemy `Connection`s a (sync) session holds, whatever state it is in."""
    trans = session._transaction
    while trans is not None and trans._parent is not None:
        trans = trans._parent
    if trans is None:
        return []
    seen: dict[int, Any] = {}
    for entry in list(trans._connections.values()):
        seen.setdefault(id(entry[0]), entry[0])
    return list(seen.values())


def _queued(pool: Any) -> Any:
    """The records idle in SQLAlchemy's queue (a list or deque; None if it cannot be read).

    SQLAlchemy's AsyncAdaptedQueue wraps an asyncio.Queue, whose items are in its `_queue`: the one
    reach into SQLAlchemy's pool internals besides `_dec_overflow`, checked on both dependency sets.
    """
    return getattr(getattr(getattr(pool, "_pool", None), "_queue", None), "_queue", None)


def _live_idle(pool: Any) -> int:
    """Idle connections in SQLAlchemy's queue, not counting records the fast path closed.

    Such a record waits in the queue without a connection and reconnects when next used.
    """
    if not pool.checkedin():
        return 0
    queue = getattr(pool, "_pool", None)
    # SQLAlchemy's AsyncAdaptedQueue wraps an asyncio.Queue, whose items are in its `_queue`.
    records = getattr(getattr(queue, "_queue", None), "_queue", None)
    if records is None:
        return int(pool.checkedin())
    return sum(1 for rec in list(records) if rec.dbapi_connection is not None)


_OPTIMIZED = inspect.CO_OPTIMIZED
_CLEARABLE = (inspect.CO_OPTIMIZED | inspect.CO_GENERATOR | inspect.CO_COROUTINE
              | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE)


def _release_frames(error: BaseException) -> None:
    """Drop the locals of the finished frames a cancellation passed through.

    sqlite3's close() leaves the file open while a statement of the connection is alive, and the
    cursor of a query cut short by the cancel is held by those frames, in a reference cycle with
    the exception: without this, the handle stays open until the garbage collector runs.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    while todo:
        exc = todo.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        todo += [e for e in (exc.__context__, exc.__cause__) if e is not None]
        tb = exc.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            # Only finished plain functions: never a module's namespace, never a suspended
            # generator or coroutine (clearing one would finalize it).
            if frame.f_code.co_flags & _CLEARABLE == _OPTIMIZED:
                with contextlib.suppress(RuntimeError):  # still executing
                    frame.clear()
            tb = tb.tb_next


class SQLAlchemyPool(EventsMixin):
    """A pool whose sessions are `AsyncSession`s on one `AsyncEngine`."""

    backend = "sqlalchemy"

    # ------------------------------------------------------------------ lifecycle
    async def _open(self) -> None:
        self._disposed_pool = None
        options = self._options
        args: dict[str, Any] = dict(options.get("connect_args") or {})
        connect = self._connect_fn(args.get("async_creator_fn"))
        if connect is not None:
            options = {**options, "connect_args": {**args, "async_creator_fn": connect}}
        engine = create_async_engine(self.config.url.get_secret_value(), **options)
        self._engine = engine
        self._install_events(engine)
        self._sessionmaker = async_sessionmaker(engine, **self._session_kw)
        # Warm `size` connections at once, then give them back: the pool starts full.
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
        while self._hot:
            # Checked out of SQLAlchemy's pool, so dispose() would not close them: give them back.
            await self._discard(self._hot.pop()[0], reason=None)
        if self._engine is not None:
            engine, self._engine = self._engine, None
            if self._active:
                self._disposed_pool = engine.sync_engine.pool
            await engine.dispose()

    def _forget_after_fork(self) -> None:
        """In a forked child: start afresh, keeping the parent's engine referenced and unclosed.

        Its connections share sockets with the parent: disposing the engine here (or letting the
        garbage collector finalize it) would send the driver's terminate message on them.
        """
        self._inherited = (self._engine, self._hot)
        self._engine = self._sessionmaker = None
        self._hot = []
        self._disposed_pool = None

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

    # ------------------------------------------------------------------ sessions
    async def _begin(self) -> AsyncSession:
        if self._binding is not None:  # connman.testing: join the test's outer transaction
            return await self._binding.begin()
        assert self._sessionmaker is not None
        if self._committed:
            self._committed.discard(asyncio.current_task())  # type: ignore[arg-type]
        if self._hot and self._active + len(self._hot) > self.config.max_size:
            # This session's slot would need a connection the fast path holds idle.
            await self._discard(self._hot.pop(0)[0], reason=None)
        return self._sessionmaker()

    def off_books(self) -> int:
        """SQLAlchemy's checked-out connections beyond the leases and the fast path's idle stack."""
        if self._engine is None:
            return 0
        pool: Any = self._engine.sync_engine.pool
        out = int(pool.checkedout())
        binding = self._binding
        if binding is not None and binding.pool is self and binding.active:
            out -= 1  # the test's outer connection (connman.testing), on the books
        return max(0, out - len(self._hot) - self._active)

    def _drop_driver(self) -> None:
        """Drop the engine of a loop that is gone: close the driver connections' sockets directly
        (no round trip is possible without their loop) and forget the pool."""
        from .._abandon import close_driver_connection

        engine, self._engine = self._engine, None
        hot, self._hot = self._hot, []
        conns = [conn for _, conn, _ in hot]
        if engine is not None:
            pool: Any = engine.sync_engine.pool
            queue = getattr(getattr(getattr(pool, "_pool", None), "_queue", None), "_queue", None)
            for rec in list(queue or ()):
                dbapi = rec.dbapi_connection
                if dbapi is not None:
                    conns.append(getattr(dbapi, "driver_connection", dbapi))
                    rec.dbapi_connection = None
        for conn in conns:
            close_driver_connection(conn)
        self._sessionmaker = None

    async def _end(self, session: AsyncSession, error: BaseException | None) -> None:
        if self._binding is not None:  # connman.testing
            return await self._binding.end(session, error)
        if error is not None:
            self._typed_end(error)
        try:
            clean = await self._close_unit(session, error)
        except BaseException as exc:
            self._reclaim_stranded()
            if exc is not error:
                self._typed_end(exc)
            raise
        if not clean or error is not None:
            self._reclaim_stranded()

    def _typed_end(self, error: BaseException) -> None:
        """Count a unit that ended in a typed server failure; a connection lost after the unit
        sent a COMMIT may have applied something: no `Retry-After` then."""
        if isinstance(error, ConnectionLost) and error.retry_after is not None:
            task = asyncio.current_task()
            if task is not None and task in self._committed:
                error.retry_after = None
        _outage.count(self, error)

    async def _close_unit(self, session: AsyncSession, error: BaseException | None) -> bool:
        """Commit (`commit="auto"`) and close a session; its connections go back or are discarded.

        Returns False when closing was interrupted or abandoned (see `finish`)."""
        clean = True
        if isinstance(error, ConcurrentUse):
            # Another task may still be running a statement on this session's connection:
            # discard it (which interrupts that statement) rather than give it back busy.
            await self._force_close(session.sync_session)
        if error is not None and not isinstance(error, Exception) and self._sqlite:
            # Cancelled: SQLAlchemy invalidated the connection if a query was in flight (the
            # invalidate event interrupts it); the cursor it leaves must not keep the file open.
            _release_frames(error)
        sync = session.sync_session
        try:
            if error is None and self._autocommit and session.in_transaction():
                try:
                    await session.commit()
                except Exception:
                    # What the server kept is unknown (SQLite even leaves the transaction open
                    # after a failed COMMIT, for the next unit to see): discard the connection
                    # instead of trusting a rollback on it.
                    await self._force_close(sync)
                    raise
        finally:
            # close() rolls back what was not committed and returns the connection, also when
            # the request was cancelled.
            try:
                clean = await finish(session.close, self._finish_timeout, self.name)
                if _session_connections(sync):
                    # close() was abandoned (stuck past its deadline): discard what it held.
                    await self._force_close(sync)
            except Exception as exc:
                # Another task is still inside this session (gather over one session), or the
                # connection broke while being reset: close() could not return it, so discard it
                # before the gate gives the slot back.
                await self._force_close(sync)
                if _is_concurrency_error(exc) or (error is not None
                                                  and _is_concurrency_error(error)):
                    raise self._concurrent(error or exc) from exc
                raise
            finally:
                # From now on the session refuses to check a connection out: no work after the
                # unit of work ended can go past the gate.
                sync.bind = EndedBind(self.name)  # type: ignore[assignment]
                await self._close_if_disposed()
        if error is not None and _is_concurrency_error(error):
            raise self._concurrent(error) from error
        return clean

    def _concurrent(self, cause: BaseException) -> ConcurrentUse:
        return ConcurrentUse(
            f"pool {self.name!r}: two tasks used one session at the same time "
            f"({type(cause).__name__}); a session is one unit of work on one connection: await "
            "its operations in turn, or give each task its own `async with "
            f"manager.session({self.name!r})`", pool=self.name)

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

    async def _force_close(self, sync: Any) -> None:
        """Discard the connections of a session that close() could not end.

        A task may be checking a connection out for the session right now: wait (at most the
        time a checkout may take) until it holds it, then invalidate every connection the session
        holds. Invalidating outside SQLAlchemy's greenlet terminates the driver connection at once
        (no round trip) and checks it back in, so the slot goes back with no connection out.
        """
        sync.bind = EndedBind(self.name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._finish_timeout
        try:
            while _changing(sync) and loop.time() < deadline:
                await asyncio.sleep(0.005)
        finally:
            for conn in _session_connections(sync):
                try:
                    if not conn.closed and not conn.invalidated:
                        conn.invalidate()
                except Exception:
                    logger.debug("connman: pool %r: invalidating a session's connection failed",
                                 self.name, exc_info=True)

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
        if fairy._pool._invalidate_time > rec.starttime or self._stale_before > rec.starttime:
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

    def _maintenance_interval(self) -> float | None:
        if self.config.overflow == 0:
            return None  # nothing above `size` to close
        return max(0.05, min(1.0, self.config.shrink_after / 10))

    async def _maintain(self) -> None:
        """Close connections above `size` that have been idle for `overflow_idle`, oldest first.

        One after another, each holding a gate slot while it closes (so `size + overflow` stays the
        maximum) and only while nobody waits; a connection in use is never touched.
        """
        engine = self._engine
        if engine is None:
            return
        pool: Any = engine.sync_engine.pool
        size, limit = self.config.size, self.config.shrink_after
        while not self._closing and _live_idle(pool) + int(pool.checkedout()) > size:
            now = time.monotonic()
            oldest: float | None = None
            record: Any = None
            hot = self._hot
            if hot:
                oldest = hot[0][2]
            queued = _queued(pool)
            for rec in list(queued) if queued is not None else ():
                since = rec.info.get("cm_in")
                if rec.dbapi_connection is not None and since is not None and (
                        oldest is None or since < oldest):
                    oldest, record = since, rec
            if oldest is None or now - oldest < limit or not self._reserve():
                return
            try:
                if record is None:
                    await self._discard(hot.pop(0)[0], "idle_close")
                else:
                    # Out of the queue and out of the pool's count at once (no I/O in between,
                    # so no checkout can take it), then closed outside.
                    queued.remove(record)
                    pool._dec_overflow()
                    record.info["cm_reason"] = "idle_close"
                    await finish(partial(greenlet_spawn, record.close), self._finish_timeout,
                                 self.name)
            finally:
                self._unreserve()

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
            fairy._connection_record.info["cm_reason"] = reason
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
                self._stale_before = time.time()
                logger.warning("connman: pool %r: the server refused a write as read-only; "
                               "discarding the pool's connections to it", self.name)
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
            fairy._connection_record.info["cm_reason"] = reason
            fairy.invalidate()
        else:
            fairy.close()

    async def _checkin_raw(self, fairy: Any, error: BaseException | None) -> None:
        probe = self._probe
        if (probe is not None and self._engine is not None and not self._closing
                and fairy.is_valid):
            conn = fairy.driver_connection
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
            pool, size = fairy._pool, self.config.size
            if not self._nwaiting and len(self._hot) + pool.checkedin() > size:
                await self._trim(pool, size)
            return
        if self._autocommit_fast and fairy.is_valid and _psycopg.autocommit(fairy.driver_connection):
            # Not made ready for sessions (the pool is closing): never hand it to one.
            await self._discard(fairy, "close")
            return
        await self._finish_checkin(fairy.close)
        await self._close_if_disposed()

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

    def _gauges(self) -> tuple[int, int]:
        if self._engine is None:
            return 0, 0
        pool: Any = self._engine.sync_engine.pool
        idle = _live_idle(pool)
        return idle + int(pool.checkedout()), idle + len(self._hot)

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
        await self._make_room()
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
