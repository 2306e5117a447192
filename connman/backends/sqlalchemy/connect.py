"""Each driver's connect as connman's `async_creator_fn` awaits it: bounded by `connect_timeout`
(handshake included), and never leaving a half-open connection behind a cancelled caller."""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from ..drivers import psycopg as _psycopg

_orphans: set[asyncio.Future[Any]] = set()


def _close_orphan(task: asyncio.Future[Any]) -> None:
    """A connect that finished for a caller who was cancelled meanwhile: close what it made."""
    if task.cancelled() or task.exception() is not None:
        return
    closing = asyncio.ensure_future(task.result().close())
    _orphans.add(closing)
    closing.add_done_callback(_orphans.discard)


async def _shielded_connect(pending: Any) -> Any:
    task = asyncio.ensure_future(pending)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_close_orphan)
        raise


def _aiosqlite_connect(*args: Any, **kw: Any) -> Any:
    """`aiosqlite.connect` that a cancelled caller cannot leave half-open.

    Cancelled while aiosqlite's thread opens the file, aiosqlite drops the result without closing
    it: the handle stays open until the garbage collector finds it. Shielded, the connect finishes
    and the connection is closed.
    """
    import aiosqlite

    pending = aiosqlite.connect(*args, **kw)
    # aiosqlite < 0.22: the connection is the thread; from 0.22 it runs one (`_thread`).
    thread: Any = pending if isinstance(pending, threading.Thread) else pending._thread
    thread.daemon = True  # as SQLAlchemy does
    return _shielded_connect(pending)


async def _connect_within(seconds: float, connect: Callable[[], Any],
                          close: Callable[[], None]) -> Any:
    """Await a driver connect that must finish, handshake included, within `seconds`.

    `close()` runs on what the connect left half-open when it timed out or was cancelled.
    """
    try:
        async with asyncio.timeout(seconds):
            return await connect()
    except BaseException:
        close()
        raise


def _aiomysql_connect(seconds: float) -> Callable[..., Any]:
    """aiomysql's connect with the handshake bounded too (its `connect_timeout` covers only TCP).

    Built from its public `Connection` so that a connect cut short can be closed: cancelled
    midway, `aiomysql.connect` drops the half-open socket to the garbage collector.
    """
    import aiomysql

    async def connected(*args: Any, **kw: Any) -> Any:
        conn = aiomysql.Connection(*args, **kw)
        await _connect_within(seconds, conn._connect, conn.close)
        return conn

    return connected


def _asyncmy_connect(seconds: float) -> Callable[..., Any]:
    """asyncmy's connect with the handshake bounded too (it closes what a cancel cut short)."""
    import asyncmy

    async def connected(*args: Any, **kw: Any) -> Any:
        return await _connect_within(seconds, partial(asyncmy.connect, *args, **kw),
                                     lambda: None)

    return connected


def _driver_call(module: str, path: str) -> Callable[..., Any]:
    """A driver's own connect function (`module` + dotted `path`), imported at the first call."""

    def connect(*args: Any, **kw: Any) -> Any:
        fn: Any = importlib.import_module(module)
        for attr in path.split("."):
            fn = getattr(fn, attr)
        return fn(*args, **kw)

    return connect


# Each driver's connect as connman's `async_creator_fn` awaits it, given `connect_timeout`: the
# one place a driver's connect is named (adding a driver is one line here). A driver missing here
# connects as SQLAlchemy's dialect would without connman: no `credentials`, no connect stats.
_CONNECT: dict[str, Callable[[float], Callable[..., Any]]] = {
    "asyncpg": lambda _: _driver_call("asyncpg", "connect"),  # `timeout` bounds it all
    "aiomysql": _aiomysql_connect,
    "asyncmy": _asyncmy_connect,
    "aiosqlite": lambda _: _aiosqlite_connect,
    "psycopg": _psycopg.connect_within,
}


def _creator(driver: str, connect_timeout: float) -> Callable[..., Any] | None:
    """The driver connect connman's `async_creator_fn` calls (None: a driver not in `_CONNECT`)."""
    factory = _CONNECT.get(driver)
    return factory(connect_timeout) if factory is not None else None
