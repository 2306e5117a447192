"""The per-test binding: every unit of work of a SQL pool joined to one outer transaction.

Moved out of the SQL backend (`connman/backends/sqlalchemy/`, issue 20): the backend keeps one
typed hook (`SQLAlchemyPool.bind(hook)`, the `UnitHook` protocol) and two `if self._binding`
branches; what a test's isolation does lives here.

How units of work share the test's one connection
-------------------------------------------------

A test has one outer connection per pool; every unit of work runs in a SAVEPOINT on it. SAVEPOINTs
nest, so the units form a **stack**, and only the unit on top may send statements:

- A **request's** unit (opened inside the app: `AppMark` marks the ASGI call) and every fast-path
  unit hold the connection for their whole unit of work, as a connection of their own would be
  held in production: concurrent requests of one test run one after the other.
- The **test's own** session units (opened outside the app: a test body, a fixture, a worker the
  test calls) hold it only while one of their calls runs. Between calls, a request's unit (or
  another test unit) may stack above theirs, so a `db_session` fixture kept open across requests
  does not block them, sees what they committed (same connection) and is seen by them. When the
  test's session is used again, it waits until the units above it have ended.

A unit that cannot get its turn within the pool's `timeout` raises `PoolTimeout` naming the unit of
the same test it waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

from .._pool import finish, shielded
from ..backends._guard import EndedBind, FastConnection, ended_message
from ..errors import ConnmanError, PoolTimeout, SessionEnded

if TYPE_CHECKING:
    from ..backends.sqlalchemy import SQLAlchemyPool

__all__ = ["AppMark", "IsolationBroken", "TestBinding", "in_app"]

logger = logging.getLogger("connman")

_IN_APP: contextvars.ContextVar[bool] = contextvars.ContextVar("connman_testing_in_app",
                                                               default=False)


def in_app() -> bool:
    """Whether the running code is inside a call of the app under test (marked by `AppMark`)."""
    return _IN_APP.get()


class AppMark:
    """ASGI middleware marking the app's calls, so a unit of work opened inside a request is told
    from one the test opens itself. The plugin adds it to the app (or wraps the app in it)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Run the app with the mark set (returns when the app's call does)."""
        token = _IN_APP.set(True)
        try:
            await self.app(scope, receive, send)
        finally:
            with contextlib.suppress(ValueError):  # reset from another context: harmless
                _IN_APP.reset(token)


class _SavepointConnection(FastConnection):
    """A fast-path connection inside a test binding: `commit()`/`rollback()`/`begin()` act on the
    unit's SAVEPOINT instead of the test's outer transaction (aiomysql, asyncmy, aiosqlite)."""

    __slots__ = ("_cm_unit",)

    def __init__(self, pool: str, unit: _RawUnit) -> None:
        super().__init__(pool, unit.driver)
        self._cm_unit = unit

    def _cm_live(self) -> _RawUnit:
        if self._cm_conn is None:
            raise SessionEnded(ended_message(self._cm_pool, "fast-path connection"),
                               pool=self._cm_pool)
        return self._cm_unit

    async def begin(self) -> None:
        """Nothing to do: the unit already runs in a savepoint."""
        self._cm_live()

    async def commit(self) -> None:
        """Keep what the unit wrote so far (RELEASE SAVEPOINT), then open a new savepoint."""
        await self._cm_live().restart(commit=True)

    async def rollback(self) -> None:
        """Undo what the unit wrote since its last commit (ROLLBACK TO SAVEPOINT)."""
        await self._cm_live().restart(commit=False)


class _RawUnit:
    """One fast-path unit of work inside a test binding: its savepoint and driver connection."""

    __slots__ = ("conn", "driver", "frame", "nested", "proxy")

    def __init__(self, conn: Any, nested: Any, driver: Any, frame: _Frame) -> None:
        self.conn = conn
        self.nested = nested
        self.driver = driver
        self.frame = frame
        self.proxy: FastConnection | None = None

    async def restart(self, *, commit: bool) -> None:
        if self.nested.is_active:
            await (self.nested.commit() if commit else self.nested.rollback())
        self.nested = await self.conn.begin_nested()


# Drivers whose connections start transactions implicitly and need `commit()` (DBAPI style): an
# uncommitted write of a fast-path unit is rolled back when it ends, as reset-on-return does.
_IMPLICIT_TRANSACTIONS = frozenset({"aiomysql", "asyncmy", "aiosqlite"})
# Drivers whose connection has `commit()`/`rollback()`: inside a test binding they act on the
# unit's savepoint (psycopg's fast path runs in autocommit, as asyncpg's: its writes are kept).
_SAVEPOINT_PROXY = _IMPLICIT_TRANSACTIONS | {"psycopg"}


def _sqlite_manual_transactions(sync_conn: Any, manual: bool) -> None:
    sync_conn.connection.dbapi_connection.isolation_level = None if manual else ""


# MariaDB/MySQL statements that commit the transaction implicitly (TEMPORARY tables do not).
_DDL = re.compile(r"\s*(CREATE|ALTER|DROP|TRUNCATE|RENAME)\s+(?!TEMPORARY\b)", re.IGNORECASE)


class IsolationBroken(ConnmanError):
    """A statement inside a test would end the test's transaction (DDL on MariaDB/MySQL)."""


class _Frame:
    """One unit of work on the test's connection (an entry of the binding's stack)."""

    __slots__ = ("held", "owner", "what")

    def __init__(self, what: str, owner: asyncio.Task[Any] | None, held: bool) -> None:
        self.what = what
        self.owner = owner
        self.held = held
        """Whether it holds the connection now: a whole request or fast-path unit, or one call of a
        test session."""

    def describe(self) -> str:
        task = self.owner.get_name() if self.owner is not None else None
        return f"{self.what}" + (f" (task {task!r})" if task else "")


# The coroutine methods of AsyncSession that may send statements: each takes the turn.
_TURN_METHODS = ("execute", "scalar", "scalars", "get", "get_one", "stream", "stream_scalars",
                 "delete", "merge", "flush", "refresh", "commit", "rollback", "close", "run_sync",
                 "connection", "invalidate", "reset")
_turn_classes: dict[type[AsyncSession], type[AsyncSession]] = {}


def _turn_method(name: str, original: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        binding: TestBinding | None = self.__dict__.get("_cm_binding")
        if binding is None:
            return await original(self, *args, **kwargs)
        return await binding._call(self, name, lambda: original(self, *args, **kwargs))

    return method


def _turn_class(base: type[AsyncSession]) -> type[AsyncSession]:
    """`base` (the pool's session class) whose I/O methods take turns on the test's connection."""
    cls = _turn_classes.get(base)
    if cls is None:
        ns: dict[str, Any] = {name: _turn_method(name, getattr(base, name))
                              for name in _TURN_METHODS if hasattr(base, name)}
        ns["__module__"] = base.__module__
        ns["__doc__"] = base.__doc__
        cls = _turn_classes[base] = type(base.__name__, (base,), ns)
    return cls


class TestBinding:
    """Every unit of work of a pool joined to one outer transaction, rolled back at the end (tests).

    Made by `connman.testing.Isolation` (`pool.bind(TestBinding(pool))`). The outer connection is
    checked out of the engine at the first unit of work, in that unit's event loop, and a
    transaction is begun on it. Each session is an `AsyncSession` bound to it with
    `join_transaction_mode="create_savepoint"`: its commit releases a SAVEPOINT, its rollback rolls
    back to it, and the app's own `begin_nested()` nests inside. A fast-path unit gets the outer
    connection's driver connection inside a SAVEPOINT. Each unit still takes its slot at the gate.
    How the units take turns: see the module docstring.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, pool: SQLAlchemyPool) -> None:
        self._pool = pool
        self.conn: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        """The event loop the outer connection lives in (None until the first unit of work)."""
        self._trans: Any = None
        self._stack: list[_Frame] = []
        self._frames: dict[int, _Frame] = {}  # by id(session): the units holding a frame
        self._waiters: list[asyncio.Future[None]] = []
        self._sqlite = pool.config.driver_name == "aiosqlite"

    @property
    def pool(self) -> SQLAlchemyPool:
        """The pool whose binding this is (replica pools share their primary's)."""
        return self._pool

    @property
    def active(self) -> bool:
        """Whether an outer transaction is open now."""
        return self.conn is not None

    # ------------------------------------------------------------------ turns
    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _blocker(self, frame: _Frame | None, task: asyncio.Task[Any] | None) -> _Frame | None:
        """The unit that keeps `frame` (None: a new unit) from using the connection now."""
        if any(f.held and f.owner is task for f in self._stack):
            return None  # inside a unit of this task: it nests
        if frame is None or frame not in self._stack:
            top = self._stack[-1] if self._stack else None
            return top if top is not None and top.held else None
        i = self._stack.index(frame)
        if i < len(self._stack) - 1:
            return self._stack[-1]
        return frame if frame.held else None

    async def _wait_turn(self, frame: _Frame | None, what: str) -> None:
        task = asyncio.current_task()
        blocker = self._blocker(frame, task)
        if blocker is None:
            return
        timeout = self.pool.config.timeout
        deadline = time.monotonic() + timeout
        while blocker is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                self.pool.counters.bump("requests_timeouts")
                raise PoolTimeout(
                    f"pool {self.pool.name!r}: {what} waited {timeout:g}s for another unit of "
                    f"work of this test, {blocker.describe()}, which "
                    + ("holds the test's connection" if blocker.held else
                       "is still open above it (a session of the test left in a transaction: "
                       "commit or close it first)")
                    + ". One connection serves every unit of work of a test, one at a time (in "
                    "production each would have its own): a unit that waits for another unit of "
                    "the same test cannot go on", pool=self.pool.name,
                    retry_after=self.pool.config.retry_after_s)
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await fut
            blocker = self._blocker(frame, task)

    async def _ensure_started(self) -> None:
        if self.conn is None:
            await self._start()

    async def _push(self, what: str) -> _Frame:
        """Wait for a turn for a new unit that holds the connection until `_pop`; push it."""
        await self._wait_turn(None, what)
        frame = _Frame(what, asyncio.current_task(), held=True)
        self._stack.append(frame)
        try:
            await self._ensure_started()
        except BaseException:
            self._pop(frame)
            raise
        return frame

    def _pop(self, frame: _Frame) -> None:
        with contextlib.suppress(ValueError):
            self._stack.remove(frame)
        self._changed()

    async def _call(self, session: AsyncSession, name: str,
                    call: Callable[[], Awaitable[Any]]) -> Any:
        """One call of a test's own session: wait for its turn, hold the connection for the call;
        the unit keeps its place on the stack while its session is in a transaction."""
        key = id(session)
        frame = self._frames.get(key)
        task = asyncio.current_task()
        await self._wait_turn(frame, f"the test's session ({name}())")
        if frame is None and any(f.held and f.owner is task for f in self._stack):
            return await call()  # inside a unit of this task: runs in its savepoint
        if frame is None:
            frame = _Frame("a unit of work the test opened", task, held=True)
            self._stack.append(frame)
            self._frames[key] = frame
        else:
            frame.held, frame.owner = True, task
        try:
            await self._ensure_started()
            return await call()
        finally:
            frame.held = False
            if not session.in_transaction():
                self._frames.pop(key, None)
                with contextlib.suppress(ValueError):
                    self._stack.remove(frame)
            self._changed()

    # ------------------------------------------------------------------ the outer transaction
    async def _start(self) -> None:
        pool = self.pool
        engine = pool._require_engine()
        conn = await engine.connect()  # admitted: the binding's outer connection (`admitted()`)
        try:
            if pool.config.driver_name in ("aiomysql", "asyncmy"):
                event.listen(conn.sync_connection, "before_cursor_execute", self._refuse_ddl)
            if self._sqlite:
                # pysqlite's own transaction handling does not mix with SAVEPOINT: take it over.
                await conn.run_sync(_sqlite_manual_transactions, True)
            self._trans = await conn.begin()
            if self._sqlite:
                await conn.exec_driver_sql("BEGIN")
        except BaseException:
            await shielded(conn.close())
            raise
        self.conn, self.loop = conn, asyncio.get_running_loop()

    def _refuse_ddl(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if _DDL.match(statement):
            raise IsolationBroken(
                f"pool {self.pool.name!r}: {statement.split(None, 2)[:2]!r}... inside a test: on "
                "MariaDB/MySQL a DDL statement commits the test's transaction implicitly, so "
                "nothing before it could be rolled back. Create the schema once per session "
                "(the connman_schema or connman_migrate fixture), or use a TEMPORARY table",
                pool=self.pool.name)

    async def start(self) -> None:
        """Begin the outer transaction now, in this event loop (else the first unit of work does)."""
        self._pop(await self._push("start()"))

    def _session(self) -> AsyncSession:
        maker = self.pool._sessionmaker
        assert maker is not None
        kw = {**maker.kw, "bind": self.conn, "join_transaction_mode": "create_savepoint"}
        return _turn_class(maker.class_)(**kw)

    async def begin(self) -> AsyncSession:
        """A session joined to the outer transaction.

        Inside the app (a request), the unit holds the connection until it ends, after the units
        before it; outside (the test's own), each of its calls takes a turn (module docstring)."""
        if not in_app():
            if self.conn is None:
                await self.start()
            session = self._session()
            session.__dict__["_cm_binding"] = self
            return session
        frame = await self._push("a request's unit of work")
        session = self._session()
        self._frames[id(session)] = frame
        return session

    async def end(self, session: AsyncSession, error: BaseException | None) -> None:
        """Commit (release the savepoint) or roll back to it, close the session, let the next in."""
        key = id(session)
        own = session.__dict__.get("_cm_binding") is self
        try:
            if error is None and session.in_transaction() and self.pool.config.commit == "auto":
                await session.commit()
        finally:
            try:
                await finish(session.close, self.pool._finish_timeout, self.pool.name)
            finally:
                # As for any session: after its unit of work it checks out nothing more.
                session.sync_session.bind = EndedBind(self.pool.name)  # type: ignore[assignment]
                frame = self._frames.pop(key, None)
                if own:
                    session.__dict__["_cm_binding"] = None
                if frame is not None:
                    self._pop(frame)

    async def begin_raw(self) -> tuple[_RawUnit, Any]:
        """The outer connection's driver connection, inside a SAVEPOINT; held until `end_raw`."""
        frame = await self._push("a request's fast-path unit" if in_app()
                                 else "a fast-path unit the test opened")
        try:
            nested = await self.conn.begin_nested()
            fairy = await self.conn.get_raw_connection()
            unit = _RawUnit(self.conn, nested, fairy.driver_connection, frame)
        except BaseException:
            self._pop(frame)
            raise
        if self.pool.config.driver_name in _SAVEPOINT_PROXY:
            unit.proxy = _SavepointConnection(self.pool.name, unit)
        else:
            unit.proxy = FastConnection(self.pool.name, unit.driver)
        return unit, unit.proxy

    async def end_raw(self, unit: _RawUnit, error: BaseException | None) -> None:
        """Keep the unit's writes (asyncpg autocommits them) or roll back to its savepoint."""
        if unit.proxy is not None and unit.proxy._cm_detach():
            logger.warning("connman: pool %r: a fast-path operation still runs on the test's "
                           "connection after its unit of work ended", self.pool.name)
        try:
            nested = unit.nested
            if nested.is_active:
                keep = error is None and self.pool.config.driver_name not in _IMPLICIT_TRANSACTIONS
                try:
                    await (nested.commit() if keep else nested.rollback())
                except Exception:
                    # A statement failed inside it (PostgreSQL refuses RELEASE then): undo it.
                    if nested.is_active:
                        await nested.rollback()
        finally:
            self._pop(unit.frame)

    async def rollback(self) -> None:
        """Roll back everything the units of work wrote and give the connection back.

        Idempotent; the next unit of work starts a new outer transaction. Must run in `loop`.
        """
        conn, trans = self.conn, self._trans
        self._stack.clear()
        self._frames.clear()
        self._changed()
        if conn is None:
            return
        self.conn = self._trans = self.loop = None

        async def close() -> None:
            try:
                if trans is not None and trans.is_active:
                    await trans.rollback()
                if self._sqlite:
                    await conn.run_sync(_sqlite_manual_transactions, False)
            finally:
                await conn.close()

        await finish(close, self.pool._finish_timeout, self.pool.name)
