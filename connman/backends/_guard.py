"""Guards that keep a unit of work inside the gate: after it ends, and while two tasks share it.

- `FastConnection`: what `manager.connection(name)` yields, a thin proxy over the driver's
  connection (as asyncpg's own pool hands out a proxy). It refuses use after its `async with`
  ended (`SessionEnded`) and a second concurrent operation (`ConcurrentUse`), and tells the pool
  whether an operation was still running when the unit ended, so that connection is discarded
  rather than handed to the next request.
- `EndedBind`: the bind an `AsyncSession` gets once its unit of work ended; any attempt to check a
  connection out through it raises `SessionEnded` instead of going past the gate.
- `Deadline` and `Limit`: `statement_timeout` on a driver call (the fast path's calls here, the
  session path's in the SQLAlchemy backend): past it the driver connection is killed, the pending
  call fails at once, and connman raises `StatementTimeout` from that failure.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from ..errors import ConcurrentUse, ConnmanError, SessionEnded, keep_driver_class

logger = logging.getLogger("connman")

_ASYNC: dict[tuple[type, str], bool] = {}


def _is_async_method(cls: type, name: str) -> bool:
    key = (cls, name)
    known = _ASYNC.get(key)
    if known is None:
        known = _ASYNC[key] = inspect.iscoroutinefunction(getattr(cls, name, None))
    return known


class Deadline:
    """A timer around one driver call: once `seconds` pass, kill the driver connection."""

    __slots__ = ("_handle", "fired")

    def __init__(self, seconds: float, kill: Callable[[Any], None], conn: Any) -> None:
        self.fired = False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a close outside the loop (interpreter exit): nothing to wait for
            self._handle: asyncio.TimerHandle | None = None
            return
        self._handle = loop.call_later(seconds, self._fire, kill, conn)

    def _fire(self, kill: Callable[[Any], None], conn: Any) -> None:
        self.fired = True
        self.kill_now(kill, conn)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()

    @staticmethod
    def kill_now(kill: Callable[[Any], None], conn: Any) -> None:
        """Kill `conn` at once; a failure to kill is logged, never raised."""
        try:
            kill(conn)
        except Exception:
            logger.debug("connman: killing a connection past its deadline failed", exc_info=True)


def driver_timeout(exc: BaseException | None) -> bool:
    """A driver's own deadline expired (asyncpg raises asyncio's TimeoutError, unwrapped)."""
    return isinstance(exc, TimeoutError) and not isinstance(exc, ConnmanError)


class Limit:
    """`statement_timeout` for the fast path's calls: `seconds`, how to kill a driver connection,
    and the `StatementTimeout` to raise. `native`: the driver enforces it (asyncpg's
    `command_timeout`, which raises asyncio's `TimeoutError`); connman then only types the error
    and kills the connection, whose protocol state is unknown."""

    __slots__ = ("expired", "kill", "native", "seconds")

    def __init__(self, seconds: float, kill: Callable[[Any], None],
                 expired: Callable[[], Exception], *, native: bool) -> None:
        self.seconds = seconds
        self.kill = kill
        self.expired = expired
        self.native = native


def ended_message(pool: str, what: str) -> str:
    """The `SessionEnded` message: what ended, and what to do instead."""
    return (f"pool {pool!r}: this {what} is closed: its unit of work ended and its connection went "
            "back to the pool. Open a new unit of work where the work happens (`async with "
            f"manager.session({pool!r})` in a background task or a streaming body), or use "
            f"`manager.session({pool!r}, scope=\"request\")` to keep the unit open until the "
            "response is sent")


class FastConnection:
    """The driver's connection from `manager.connection(name)`, valid inside its `async with`.

    Attribute access is delegated to the driver's connection (asyncpg, psycopg, aiomysql,
    asyncmy, aiosqlite). Coroutine methods (`fetch`, `execute`, ...) are tracked: a second one started while
    one runs raises `ConcurrentUse` before the driver sees it. With `statement_timeout` set, each
    one that gets no answer within it raises `StatementTimeout` (the connection is killed and
    discarded when the block ends). After the `async with` ended every access raises
    `SessionEnded`.
    """

    __slots__ = ("_cm_busy", "_cm_check", "_cm_conn", "_cm_limit", "_cm_pool")

    def __init__(self, pool: str, conn: Any, limit: Limit | None = None,
                 check: Callable[[object], None] | None = None) -> None:
        self._cm_pool = pool
        self._cm_conn = conn
        self._cm_busy = 0
        self._cm_limit = limit
        self._cm_check = check
        """Called with each tracked call's first argument (the SQL text), if set."""

    def __getattr__(self, name: str) -> Any:
        conn = self._cm_conn
        if conn is None:
            if name.startswith("__"):
                raise AttributeError(name)
            raise SessionEnded(ended_message(self._cm_pool, "fast-path connection"),
                               pool=self._cm_pool)
        attr = getattr(conn, name)
        if _is_async_method(type(conn), name) and name not in _CONCURRENT_BY_DESIGN:
            return _Tracked(self, attr)
        if name in _AIOSQLITE_RESULTS and _is_aiosqlite(conn):
            return _ResultMaker(self, attr)
        if name == "cursor":
            return _CursorMaker(self, attr)
        return attr

    def _cm_detach(self) -> int:
        """End the unit: refuse further use; returns how many operations were still running."""
        self._cm_conn = None
        return self._cm_busy

    def __repr__(self) -> str:
        conn = self._cm_conn
        state = "returned" if conn is None else type(conn).__name__
        return f"<FastConnection pool={self._cm_pool!r} {state}>"


# Methods made to be called while another operation runs (psycopg's `cancel_safe`).
_CONCURRENT_BY_DESIGN = frozenset({"cancel_safe"})


class _Tracked:
    """One coroutine method of a `FastConnection`, counted while it runs."""

    __slots__ = ("fn", "owner")

    def __init__(self, owner: FastConnection, fn: Callable[..., Awaitable[Any]]) -> None:
        self.owner = owner
        self.fn = fn

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        owner = self.owner
        conn = owner._cm_conn
        if conn is None:  # a bound method kept from inside the block, called after it
            raise SessionEnded(ended_message(owner._cm_pool, "fast-path connection"),
                               pool=owner._cm_pool)
        if owner._cm_busy:
            raise ConcurrentUse(
                f"pool {owner._cm_pool!r}: another operation is still running on this fast-path "
                "connection; one connection runs one operation at a time: await them in turn, "
                "or give each task its own `manager.connection(...)`", pool=owner._cm_pool)
        if owner._cm_check is not None and args:
            owner._cm_check(args[0])
        owner._cm_busy += 1
        limit = owner._cm_limit
        deadline = (Deadline(limit.seconds, limit.kill, conn)
                    if limit is not None and not limit.native else None)
        try:
            return await self.fn(*args, **kwargs)
        except Exception as exc:
            if limit is not None and ((deadline is not None and deadline.fired)
                                      or (limit.native and driver_timeout(exc))):
                if deadline is None:
                    # asyncpg gave up waiting; the server may still run the query: kill it.
                    Deadline.kill_now(limit.kill, conn)
                expired = limit.expired()
                if isinstance(expired, ConnmanError):  # still the driver's class, too
                    expired = keep_driver_class(expired, exc)
                raise expired from exc
            raise
        finally:
            if deadline is not None:
                deadline.cancel()
            owner._cm_busy -= 1


# aiosqlite's methods that return its `Result` (awaitable, and an async context manager that
# closes the cursor) rather than being coroutine functions.
_AIOSQLITE_RESULTS = frozenset({"execute", "executemany", "executescript", "execute_fetchall",
                                "execute_insert", "cursor"})


def _is_aiosqlite(conn: Any) -> bool:
    return type(conn).__module__.startswith("aiosqlite")


class _ResultMaker:
    """An aiosqlite `Result`-returning method of a `FastConnection`: tracked and bounded as a
    coroutine method, its cursor tracked too."""

    __slots__ = ("fn", "owner")

    def __init__(self, owner: FastConnection, fn: Callable[..., Any]) -> None:
        self.owner = owner
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> _BoundResult:
        return _BoundResult(self.owner, self.fn, args, kwargs)


class _BoundResult:
    """`await conn.execute(...)` or `async with conn.execute(...) as cursor` on aiosqlite."""

    __slots__ = ("_cursor", "args", "fn", "kwargs", "owner")

    def __init__(self, owner: FastConnection, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
        self.owner = owner
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self._cursor: Any = None

    async def _run(self) -> Any:
        made = await _Tracked(self.owner, self.fn)(*self.args, **self.kwargs)
        if hasattr(made, "fetchall") and _is_async_method(type(made), "fetchall"):
            self._cursor = made
            return TrackedCursor(self.owner, made)
        return made

    def __await__(self) -> Any:
        return self._run().__await__()

    async def __aenter__(self) -> Any:
        return await self._run()

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._cursor is not None:
            await self._cursor.close()


class _CursorMaker:
    """`conn.cursor` of a MySQL driver: the cursors it makes count their queries on the owner.

    aiomysql's `cursor()` returns an awaitable context manager, asyncmy's the cursor itself (also
    an async context manager); both shapes are kept.
    """

    __slots__ = ("fn", "owner")

    def __init__(self, owner: FastConnection, fn: Callable[..., Any]) -> None:
        self.owner = owner
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        made = self.fn(*args, **kwargs)
        if inspect.isawaitable(made):
            return _PendingCursor(self.owner, made)
        return TrackedCursor(self.owner, made)


class _PendingCursor:
    """aiomysql's `conn.cursor()`: `await` it or `async with` it for a `TrackedCursor`."""

    __slots__ = ("made", "owner")

    def __init__(self, owner: FastConnection, made: Any) -> None:
        self.owner = owner
        self.made = made

    def __await__(self) -> Any:
        cursor = yield from self.made.__await__()
        return TrackedCursor(self.owner, cursor)

    async def __aenter__(self) -> TrackedCursor:
        return TrackedCursor(self.owner, await self.made.__aenter__())

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self.made.__aexit__(*exc_info)


class TrackedCursor:
    """A MySQL driver's cursor whose coroutine methods count on its `FastConnection`."""

    __slots__ = ("_cm_cursor", "_cm_owner")

    def __init__(self, owner: FastConnection, cursor: Any) -> None:
        self._cm_owner = owner
        self._cm_cursor = cursor

    def __getattr__(self, name: str) -> Any:
        owner = self._cm_owner
        if owner._cm_conn is None and not name.startswith("__"):
            raise SessionEnded(ended_message(owner._cm_pool, "fast-path connection"),
                               pool=owner._cm_pool)
        attr = getattr(self._cm_cursor, name)
        if _is_async_method(type(self._cm_cursor), name):
            return _Tracked(owner, attr)
        return attr

    def __aiter__(self) -> Any:
        return self._cm_cursor.__aiter__()

    async def __aenter__(self) -> TrackedCursor:
        await self._cm_cursor.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self._cm_cursor.__aexit__(*exc_info)


class EndedBind:
    """The bind of a session whose unit of work ended: checking out through it raises."""

    __slots__ = ("pool",)

    def __init__(self, pool: str) -> None:
        self.pool = pool

    def _refuse(self) -> NoReturn:
        raise SessionEnded(ended_message(self.pool, "session"), pool=self.pool)

    def connect(self) -> NoReturn:
        """Refuse: the unit of work ended."""
        self._refuse()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        self._refuse()

    def __repr__(self) -> str:
        return f"<ended unit of work of pool {self.pool!r}>"
