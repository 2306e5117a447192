"""The Mongo unit of work a session yields: a database handle whose every operation the gate sees.

PyMongo and Motor check a connection out per operation, so a session's one gate slot says nothing
about what the driver holds: a `gather` of reads, a change stream, a cursor iterated by a streaming
response after the handler returned. `MongoUnit` wraps the database and everything reached from it
(collections, cursors, change streams) and runs each operation under a slot:

- while the unit is live, its first operation in flight uses the unit's own slot; each operation
  running at the same time (a `gather`) takes a slot of its own from the gate, FIFO, within
  `timeout`, so an exhausted pool is connman's `PoolTimeout`, never the driver's wait queue;
- after the unit ended, an operation takes a slot of its own for its duration (a response that
  streams a cursor or a change stream is served under the gate); with `transaction` on, the unit's
  session is gone and any use raises `SessionEnded`;
- cursors and change streams are tracked: closed on the server when the unit ends by an error or a
  cancellation (shielded), when their own iteration fails or is cancelled, and otherwise when the
  task that ended the unit finishes (for a request: once its response was sent or abandoned).

Objects are real PyMongo/Motor objects underneath; `unit.delegate` is the database itself and
`unit.client_session` the unit's `ClientSession` (with `transaction` on) for ODMs that take one.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Protocol

from .._pool import Lease, shielded
from ..config import PoolConfig
from ..errors import ConcurrentUse, PoolClosed, PoolTimeout, SessionEnded
from ..stats import PoolStats
from ._mongo_calls import (
    CLIENT_REFUSED,
    CURSOR_OPS,
    OPENERS,
    OUTSIDE_TRANSACTION,
    Kinds,
    is_op,
    kind_of,
    takes_session,
)
from ._mongo_errors import RETRIED_WRITES, command_op, typed_error
from .drivers.pymongo import server_cursor

__all__ = ["MongoUnit", "close_cursors"]

logger = logging.getLogger("connman.mongo")


class UnitPool(Protocol):
    """What a unit needs of its pool (`MongoPool`); a protocol, so this module imports no pool."""

    name: str
    config: PoolConfig
    counters: PoolStats

    async def acquire(self) -> Lease: ...
    def release(self, lease: Lease) -> None: ...
    def native(self) -> Any: ...
    def _adopt(self, cursor: _Cursor, task: asyncio.Task[Any] | None = None) -> None: ...
    def _disown(self, cursor: _Cursor) -> None: ...


class MongoUnit:
    """One Mongo unit of work: use it as the database (`unit.orders.find_one(...)`, `unit["x"]`).

    Every operation runs under a gate slot (see the module docstring); cursors it opens are closed
    when the unit is done with them; with `transaction: true`, every call that takes `session=`
    gets the unit's (`SESSION_CALLS`). `unit.client_session` is the unit's `ClientSession` when the
    pool runs units in a transaction (else None); `unit.delegate` is the PyMongo/Motor database.
    `unit.database(name)` and `unit.client[name]` are other databases of the same client, under
    the same gate and transaction.
    """

    __slots__ = ("_busy", "_cursors", "_ended", "_idle", "_pool", "_session", "_threaded", "_txn",
                 "delegate")

    def __init__(self, pool: UnitPool, database: Any, session: Any, transaction: bool) -> None:
        if not Kinds.loaded:
            Kinds.load()
        self._pool = pool
        self.delegate = database
        self._session = session
        self._txn = transaction
        self._ended = False
        self._busy = False
        self._idle: asyncio.Event | None = None
        self._cursors: set[_Cursor] = set()
        # Motor runs each operation in a worker thread that a cancellation cannot stop: the
        # operation keeps its driver connection until it returns, so it keeps its slot too.
        self._threaded = type(database).__module__.startswith("motor")

    @property
    def client_session(self) -> Any:
        """The unit's `ClientSession` (in a transaction), or None; pass it to ODMs that take one."""
        return self._session

    def database(self, name: str) -> _Handle:
        """Database `name` of the pool's client, as this unit: same gate slot, same transaction
        (a transaction may span databases), same cursor cleanup. No I/O.

        (A collection called "database" stays reachable as `unit["database"]`.)
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"pool {self._pool.name!r}: a database name is a non-empty string")
        return _Handle(self, self.delegate.client[name])

    def bind(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """`async with unit.bind():` every operation of the pool's client in the block joins the
        unit's transaction without `session=`: an ODM's (Beanie's) and `manager.native(name)`'s
        too, so a forgotten `session=` cannot run outside the transaction.

        PyMongo's `ClientSession.bind()` (PyMongo >= 4.17, driver `pymongo`); the unit's session
        stays the unit's (it ends with the unit). Without `transaction` there is no session to
        bind: the block runs as is. Raises `TypeError` on Motor or PyMongo < 4.17 (pass
        `session=unit.client_session` there).
        """
        session = self._session
        if session is None:
            return contextlib.nullcontext()
        bind = getattr(session, "bind", None)
        if bind is None:
            raise TypeError(
                f"pool {self._pool.name!r}: binding the unit's session needs PyMongo >= 4.17 and "
                "driver 'pymongo'; pass session=unit.client_session to each call instead")
        cm: contextlib.AbstractAsyncContextManager[Any] = bind(end_session=False)
        return cm

    def _retarget(self, name: str) -> None:
        """Make this unit's database `name` (`manager.session(..., database=name)`); no I/O."""
        self.delegate = self.database(name).delegate

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _wrap(self, getattr(self.delegate, name), self.delegate, name)

    def __getitem__(self, name: str) -> _Handle:
        return _Handle(self, self.delegate[name])

    def __repr__(self) -> str:
        state = "ended" if self._ended else "live"
        return f"<MongoUnit {self._pool.name!r} {self.delegate.name!r} {state}>"

    # ------------------------------------------------------------------ operations
    def _check(self) -> None:
        if self._ended and self._txn:
            raise SessionEnded(
                f"pool {self._pool.name!r}: this unit of work ended (its transaction was "
                "committed or aborted); open a new session", pool=self._pool.name)

    async def _run(self, call: Callable[[], Any], cursor: _Cursor | None = None,
                   opens: bool = False, closing: bool = False, op: str = "") -> Any:
        """Run one driver operation under a gate slot; wrap what it returns."""
        if not closing:
            self._check()
        pool = self._pool
        if cursor is not None and self._ended:
            pool._adopt(cursor)  # closed when the task reading it ends, if not before
        own = not self._ended and not self._busy
        lease: Lease | None = None
        if own:
            self._busy = True
        elif self._txn and not closing:
            raise ConcurrentUse(
                f"pool {pool.name!r}: two operations at once in one transaction; await them "
                "one after the other", pool=pool.name)
        else:
            lease = await pool.acquire()
        on_server = cursor.on_server() if cursor is not None else None
        try:
            # An operation runs in a task of its own and a cancel waits for it: the driver's own
            # cleanup (the check-in of its connection) must not be cut by a cancellation that
            # repeats at every await (anyio's cancel scopes, as under Starlette), or the slot
            # goes back while the connection is still out. A started cursor's fetch is killed
            # with its cursor instead (`_close_cursor`).
            if (cursor is None and not closing) or opens or self._threaded or (
                    cursor is not None and not cursor.started()):
                result = await _in_own_task(call, pool.config.timeout, self)
            else:
                result = await call()
        except StopAsyncIteration:
            if cursor is not None:
                self._forget(cursor)
            raise
        except BaseException as exc:
            if cursor is not None:
                await shielded(self._close_cursor(cursor, on_server), pool.config.timeout)
            typed = typed_error(pool, exc, op=op or ("next" if cursor is not None else ""),
                                retried_write=op in RETRIED_WRITES,
                                in_transaction=self._session is not None)
            if typed is not None:
                raise typed from exc
            raise
        finally:
            if lease is not None:
                pool.release(lease)
            elif own:
                self._busy = False
                if self._idle is not None:
                    self._idle.set()
        if cursor is not None:
            if not cursor.is_open():
                self._forget(cursor)
            return cursor if result is cursor.delegate else _wrap_result(self, result)
        return _wrap_result(self, result)

    # ------------------------------------------------------------------ cursors
    def _track(self, cursor: _Cursor) -> None:
        if self._ended:
            self._pool._adopt(cursor)
        else:
            self._cursors.add(cursor)

    def _forget(self, cursor: _Cursor) -> None:
        self._cursors.discard(cursor)
        self._pool._disown(cursor)

    async def _close_cursor(self, cursor: _Cursor,
                            on_server: tuple[str, str, int] | None = None) -> None:
        """Close one cursor on the server; the caller holds a gate slot for it, or none is needed.

        `on_server` is the cursor as it was before a fetch that failed or was cancelled: the
        driver then marks the cursor dead without telling the server, so connman does.
        """
        self._forget(cursor)
        if cursor.on_server() is not None:
            on_server = None  # the driver still knows it: its close() kills it
        try:
            result = cursor.delegate.close()
            if inspect.isawaitable(result):
                await result
            if on_server is not None:
                db, coll, cid = on_server
                await self._pool.native()[db].command("killCursors", coll, cursors=[cid])
        except Exception:
            logger.debug("connman: pool %r: closing a cursor failed", self._pool.name,
                         exc_info=True)

    # ------------------------------------------------------------------ the end
    async def _finish(self, error: BaseException | None) -> list[_Cursor]:
        """Mark the unit ended; return the open cursors the caller must close or hand over."""
        self._ended = True
        if self._busy:
            # An operation of this unit still runs in another task (a gather the handler left):
            # it holds the unit's slot, so the slot is given back only once it is done.
            self._idle = asyncio.Event()
            await self._idle.wait()
        cursors = [c for c in self._cursors if not c.finished()]
        self._cursors.clear()
        return cursors


class _Handle:
    """A database or collection reached from a unit: attributes and calls go through the unit."""

    __slots__ = ("delegate", "unit")

    def __init__(self, unit: MongoUnit, delegate: Any) -> None:
        self.unit = unit
        self.delegate = delegate

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _wrap(self.unit, getattr(self.delegate, name), self.delegate, name)

    def __getitem__(self, name: str) -> _Handle:
        return _Handle(self.unit, self.delegate[name])

    def __eq__(self, other: object) -> bool:
        return bool(self.delegate == getattr(other, "delegate", other))

    def __hash__(self) -> int:
        return hash(self.delegate)

    def __repr__(self) -> str:
        return f"<connman {self.delegate!r}>"


class _Cursor:
    """A cursor or change stream reached from a unit; each fetch is an operation under the gate."""

    __slots__ = ("__weakref__", "delegate", "stream", "unit")

    def __init__(self, unit: MongoUnit, delegate: Any, stream: bool) -> None:
        self.unit = unit
        self.delegate = delegate
        self.stream = stream
        unit._track(self)

    def started(self) -> bool:
        """Whether the server was asked for this cursor yet (it may hold one from then on)."""
        d = self.delegate
        if self.stream:
            return getattr(d, "delegate", True) is not None  # Motor creates it on first fetch
        try:
            return d.cursor_id is not None
        except Exception:  # a Motor latent cursor not started yet
            return False

    def on_server(self) -> tuple[str, str, int] | None:
        """(database, collection, cursor id) of the server cursor, while there is one."""
        return server_cursor(self.delegate, stream=self.stream)

    def finished(self) -> bool:
        """Whether this cursor can fetch nothing more (exhausted, closed or killed)."""
        try:
            return not self.delegate.alive
        except Exception:
            return False

    def is_open(self) -> bool:
        """Whether the server may hold this cursor (started, not exhausted, not closed)."""
        d = self.delegate
        try:
            if not d.alive:
                return False
            if self.stream:
                return True
            cid = d.cursor_id
        except Exception:  # a Motor latent cursor not started yet
            return False
        return bool(cid)

    def __aiter__(self) -> _Cursor:
        return self

    def __await__(self) -> Generator[Any, None, _Cursor]:
        """`await cursor` is the cursor itself: PyMongo's awaited shape on Motor's cursors."""
        return _itself(self).__await__()

    async def __anext__(self) -> Any:
        return await self.unit._run(self.delegate.__anext__, self, op="next")

    async def close(self) -> None:
        """Close the cursor on the server (under a gate slot when it holds one there)."""
        if not self.is_open():
            self.unit._forget(self)
            result = self.delegate.close()
            if inspect.isawaitable(result):
                await result
            return
        await self.unit._run(lambda: self.unit._close_cursor(self), closing=True)

    async def __aenter__(self) -> _Cursor:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        attr = getattr(self.delegate, name)
        if not callable(attr):
            return attr
        if name in CURSOR_OPS or is_op(attr):
            def op(*args: Any, **kwargs: Any) -> Awaitable[Any]:
                return self.unit._run(lambda: attr(*args, **kwargs), self, op=name)
            return op

        def chain(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            return self if result is self.delegate else _wrap_result(self.unit, result)
        return chain

    def __repr__(self) -> str:
        return f"<connman {self.delegate!r}>"


async def _itself(cursor: _Cursor) -> _Cursor:
    return cursor


async def _in_own_task(call: Callable[[], Any], limit: float, unit: MongoUnit) -> Any:
    """Run a driver call in a task of its own, so that a cancel never cuts the driver midway.

    A cancel of the caller waits for the call's reply (at most `limit` seconds), then goes on:
    PyMongo checks its connection back in as the call unwinds, and a cancel that lands inside that
    check-in (anyio cancels again and again) could leave the connection out while the unit's gate
    slot goes back. A cursor's id is only in the reply: a request cancelled before it arrived would
    leave the cursor open on the server (mongod keeps it 10 minutes), so a cursor that arrives
    after the cancel is closed. Motor's worker thread holds a driver connection until the
    operation returns, so its gate slot is held as long (at most `limit` seconds after the cancel).
    Returns the call's result; raises its error, or `CancelledError` once it has settled.
    """
    task: asyncio.Future[Any] = asyncio.ensure_future(call())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        # `shielded` waits to the end and re-raises a cancel that came meanwhile: each step runs
        # whatever the one before it raised.
        try:
            if not task.done():
                await shielded(asyncio.wait((task,), timeout=limit))
        finally:
            if not task.done():
                task.cancel()  # and wait until the driver has unwound: its connection is back
                with contextlib.suppress(asyncio.CancelledError):
                    await shielded(asyncio.wait((task,), timeout=limit))
            elif not task.cancelled() and task.exception() is None:
                result = task.result()
                if isinstance(result, (*Kinds.cursors, *Kinds.streams)):
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await shielded(_close_quietly(result), limit)
            elif not task.cancelled():
                task.exception()  # retrieved: the request was cancelled, its error is moot
        raise


async def _close_quietly(delegate: Any) -> None:
    result = delegate.close()
    if inspect.isawaitable(result):
        await result


def _wrap_result(unit: MongoUnit, value: Any) -> Any:
    if isinstance(value, Kinds.handles):
        return _Handle(unit, value)
    if isinstance(value, Kinds.streams):
        return _Cursor(unit, value, stream=True)
    if isinstance(value, Kinds.cursors):
        return _Cursor(unit, value, stream=False)
    if isinstance(value, Kinds.clients):
        return _ClientHandle(unit, value)
    return value


def _estimated_count(owner: Any) -> Callable[..., Any]:
    """`estimated_document_count` inside a transaction: PyMongo refuses it a session and the
    server the `count` command, so the unit counts with `count_documents({})` in the transaction
    (exact, and it sees the unit's own writes; it scans instead of reading the metadata)."""
    def count(comment: Any = None, **kwargs: Any) -> Any:
        if comment is not None:
            kwargs["comment"] = comment
        return owner.count_documents({}, **kwargs)
    return count


def _wrap(unit: MongoUnit, attr: Any, owner: Any, name: str) -> Any:
    """An attribute of a database/collection/client, as the unit hands it out."""
    if not callable(attr) or isinstance(attr, (*Kinds.handles, *Kinds.clients)):
        return _wrap_result(unit, attr)
    session = unit._session
    inject = (session is not None and name not in OUTSIDE_TRANSACTION
              and takes_session(owner, name))
    does_io = is_op(attr, owner, name)
    if session is not None and name == "estimated_document_count" and kind_of(owner):
        attr, inject = _estimated_count(owner), True
    if does_io:
        if name in OPENERS:
            def opener(*args: Any, **kwargs: Any) -> _PendingCursor:
                if inject and "session" not in kwargs:
                    kwargs["session"] = unit._session
                return _PendingCursor(unit, lambda: attr(*args, **kwargs), name)
            return opener

        def op(*args: Any, **kwargs: Any) -> Awaitable[Any]:
            if inject and "session" not in kwargs:
                kwargs["session"] = unit._session
            return unit._run(lambda: attr(*args, **kwargs), op=command_op(name, args, kwargs))
        return op

    def call(*args: Any, **kwargs: Any) -> Any:
        unit._check()
        if inject and "session" not in kwargs:
            kwargs["session"] = unit._session
        return _wrap_result(unit, attr(*args, **kwargs))
    return call


class _ClientHandle:
    """The pool's client reached from a unit (`unit.client`): its databases are the unit's.

    `client[name]`, `client.name` and `client.get_database(name)` give database handles under
    the unit's gate slot and transaction; its calls that take a session get the unit's. Closing
    the client or starting sessions of its own is refused: use `manager.native(name)`.
    """

    __slots__ = ("delegate", "unit")

    def __init__(self, unit: MongoUnit, delegate: Any) -> None:
        self.unit = unit
        self.delegate = delegate

    def __getitem__(self, name: str) -> _Handle:
        return _Handle(self.unit, self.delegate[name])

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name in CLIENT_REFUSED:
            pool = self.unit._pool.name
            raise TypeError(
                f"pool {pool!r}: `{name}` on a unit's client is refused: the client is the pool's "
                f"(use manager.native({pool!r}) for the client itself, outside the gate)")
        return _wrap(self.unit, getattr(self.delegate, name), self.delegate, name)

    def __repr__(self) -> str:
        return f"<connman {self.delegate!r}>"


class _PendingCursor:
    """A cursor-returning call not yet sent (PyMongo's `aggregate`, `watch`, `list_*`).

    Both shapes work on both drivers: `await` it for the cursor (PyMongo's shape), or use it as
    the cursor at once, as Motor's code does (`async for`, `to_list`, `next`, `async with`).
    """

    __slots__ = ("_call", "_cursor", "_op", "unit")

    def __init__(self, unit: MongoUnit, call: Callable[[], Any], op: str) -> None:
        self.unit = unit
        self._call = call
        self._op = op
        self._cursor: Any = None

    async def _open(self) -> Any:
        if self._cursor is None:
            self._cursor = await self.unit._run(self._call, opens=True, op=self._op)
        return self._cursor

    def __await__(self) -> Generator[Any, None, Any]:
        return self._open().__await__()

    def __aiter__(self) -> _PendingCursor:
        return self

    async def __anext__(self) -> Any:
        return await (await self._open()).__anext__()

    async def __aenter__(self) -> Any:
        return await self._open()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the cursor (nothing to do if it was never opened)."""
        if self._cursor is not None:
            await self._cursor.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if self._cursor is not None:
            return getattr(self._cursor, name)

        async def op(*args: Any, **kwargs: Any) -> Any:
            return await getattr(await self._open(), name)(*args, **kwargs)
        return op

    def __repr__(self) -> str:
        return f"<connman pending {self._op}()>"


async def close_cursors(pool: UnitPool, cursors: list[_Cursor], *, own_slot: bool) -> None:
    """Close cursors on the server: under the caller's slot, or under one taken from the gate."""
    if not cursors:
        return
    for c in cursors:
        if not c.is_open():  # never started: nothing on the server
            c.unit._forget(c)
    cursors = [c for c in cursors if c.is_open()]
    if own_slot or not cursors:
        for c in cursors:
            await c.unit._close_cursor(c)
        return
    while True:
        try:
            lease = await pool.acquire()
        except PoolTimeout:
            continue
        except PoolClosed:  # the client is being closed: its cursors die with it
            return
        try:
            for c in cursors:
                await c.unit._close_cursor(c)
        finally:
            pool.release(lease)
        return
