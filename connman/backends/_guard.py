"""Guards that keep a unit of work inside the gate: after it ends, and while two tasks share it.

- `FastConnection`: what `manager.connection(name)` yields, a thin proxy over the driver's
  connection (as asyncpg's own pool hands out a proxy). It refuses use after its `async with`
  ended (`SessionEnded`) and a second concurrent operation (`ConcurrentUse`), and tells the pool
  whether an operation was still running when the unit ended, so that connection is discarded
  rather than handed to the next request.
- `EndedBind`: the bind an `AsyncSession` gets once its unit of work ended; any attempt to check a
  connection out through it raises `SessionEnded` instead of going past the gate.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from ..errors import ConcurrentUse, SessionEnded

_ASYNC: dict[tuple[type, str], bool] = {}


def _is_async_method(cls: type, name: str) -> bool:
    key = (cls, name)
    known = _ASYNC.get(key)
    if known is None:
        known = _ASYNC[key] = inspect.iscoroutinefunction(getattr(cls, name, None))
    return known


def ended_message(pool: str, what: str) -> str:
    """The `SessionEnded` message: what ended, and what to do instead."""
    return (f"pool {pool!r}: this {what} is closed: its unit of work ended and its connection went "
            "back to the pool. Open a new unit of work where the work happens (`async with "
            f"manager.session({pool!r})` in a background task or a streaming body), or use "
            f"`manager.session({pool!r}, scope=\"request\")` to keep the unit open until the "
            "response is sent")


class FastConnection:
    """The driver's connection from `manager.connection(name)`, valid inside its `async with`.

    Attribute access is delegated to the driver's connection (asyncpg, aiomysql, asyncmy,
    aiosqlite). Coroutine methods (`fetch`, `execute`, ...) are tracked: a second one started while
    one runs raises `ConcurrentUse` before the driver sees it. After the `async with` ended every
    access raises `SessionEnded`.
    """

    __slots__ = ("_cm_busy", "_cm_conn", "_cm_pool")

    def __init__(self, pool: str, conn: Any) -> None:
        self._cm_pool = pool
        self._cm_conn = conn
        self._cm_busy = 0

    def __getattr__(self, name: str) -> Any:
        conn = self._cm_conn
        if conn is None:
            if name.startswith("__"):
                raise AttributeError(name)
            raise SessionEnded(ended_message(self._cm_pool, "fast-path connection"),
                               pool=self._cm_pool)
        attr = getattr(conn, name)
        if _is_async_method(type(conn), name):
            return _Tracked(self, attr)
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


class _Tracked:
    """One coroutine method of a `FastConnection`, counted while it runs."""

    __slots__ = ("fn", "owner")

    def __init__(self, owner: FastConnection, fn: Callable[..., Awaitable[Any]]) -> None:
        self.owner = owner
        self.fn = fn

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        owner = self.owner
        if owner._cm_busy:
            raise ConcurrentUse(
                f"pool {owner._cm_pool!r}: another operation is still running on this fast-path "
                "connection; one connection runs one operation at a time: await them in turn, "
                "or give each task its own `manager.connection(...)`", pool=owner._cm_pool)
        owner._cm_busy += 1
        try:
            return await self.fn(*args, **kwargs)
        finally:
            owner._cm_busy -= 1


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
