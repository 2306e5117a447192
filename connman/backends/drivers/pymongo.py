"""PyMongo (`AsyncMongoClient`) and Motor: what connman knows of their internals, in one place.

PyMongo gives no public handle on its connection pools, its connections or a cursor's server-side
id and namespace, yet connman's `recycle`, its shrink above `size`, its close of a client whose
event loop is gone and its cleanup of cursors a cancelled fetch left on the server need them.
Every attribute reached below is checked on a live client on both dependency sets by
tests/test_reaches.py, which fails if one disappears or changes meaning.

Private attributes reached, here:

- `AsyncMongoClient._topology` (Motor: `client.delegate._topology`) and `Topology._servers`
  (address -> `Server`): the servers, whose pools `server_pools()` returns.
- The server pools (`Server.pool`, a `pymongo.asynchronous.pool.Pool`, or the synchronous one
  under Motor): `Pool.conns` (the idle deque, most recently used on the left), `.active_sockets`,
  `.address`, `.lock` (the threading lock Motor's worker threads take) and, of each connection,
  `.id`, `.generation`, `.idle_time_seconds()`, `.close_conn(reason)`. These are not underscored
  but belong to PyMongo's internal classes: `shrink()` closes idle connections above `size`;
  `retire()` writes `generation = -1`, so PyMongo closes the connection as stale (CMAP reason
  "stale") instead of reusing it: how `recycle` ends a connection.
- `Pool.checkin` (reassigned on the live pool by `wrap_checkin()`): `recycle` is enforced where a
  connection comes back; PyMongo calls `self.checkin(conn)`, so the pool's own attribute wins.
- `Server._monitor._pool` and `Server._monitor._rtt_monitor._pool`: the monitors' pools, whose
  connections `close_client_without_loop()` closes too.
- `AsyncConnection.conn.conn[0]`: the asyncio transport of a connection (its
  `AsyncNetworkingInterface` holds `(transport, protocol)`); `close_client_without_loop()` closes
  its socket (`drivers.close_transport_without_loop`).
- `AsyncMongoClient._closed` (written): `close_client_without_loop()` sets it, as `close()` does,
  so the client's finalizer does not warn "Unclosed AsyncMongoClient" for a client it closed.
- `AsyncChangeStream._cursor` (the command cursor a change stream reads) and the cursors'
  `_collection` (`AsyncCommandCursor` has no public `collection`): `server_cursor()`, the
  namespace and id a `killCursors` needs after a failed fetch made PyMongo forget the cursor.
- `pymongo._csot.get_timeout()` (a private module): `app_deadline()`, whether the app's own
  `pymongo.timeout()` block bounds the current call (the public API has no getter).
- `pymongo.errors._OperationCancelled` (a private class): `OPERATION_CANCELLED`, the error of an
  operation PyMongo's monitor interrupted (CMAP's interruptInUseConnections).

Reached elsewhere, listed here:

- Motor's `is_async_method` marker on its asynchronized methods: `backends/_mongo_calls.py:is_op`
  tells a Motor method that does I/O from one that does not (Motor's methods return Futures and
  are not coroutine functions). Read with a default of False: any other callable lacks it.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any

from pymongo import monitoring
from pymongo.errors import _OperationCancelled

from . import close_transport_without_loop

__all__ = ["OPERATION_CANCELLED", "app_deadline", "close_client_without_loop", "retire",
           "server_cursor", "server_pools", "shrink", "wrap_checkin"]

OPERATION_CANCELLED: type[Exception] = _OperationCancelled
"""PyMongo's error for an operation its monitor interrupted (the server stopped answering)."""


def _pymongo_client(client: Any, motor: bool) -> Any:
    return client.delegate if motor else client  # Motor wraps PyMongo's synchronous client


def server_pools(client: Any, *, motor: bool) -> list[Any]:
    """The connection pools of the client's known servers (no I/O)."""
    servers = _pymongo_client(client, motor)._topology._servers
    return [server.pool for server in list(servers.values())]


def retire(conn: Any) -> None:
    """Make PyMongo close this connection as stale at its next check-in or checkout."""
    conn.generation = -1


def wrap_checkin(pool: Any, before: Callable[[Any, Any], None]) -> None:
    """Have the pool call `before(address, conn)` on each connection it gets back, before its
    own `checkin`; once per pool (a pool already wrapped is left as it is)."""
    original = pool.checkin
    if getattr(original, "connman_wrapped", False):  # ours: marked below; PyMongo's: unmarked
        return
    address = pool.address
    if inspect.iscoroutinefunction(original):
        async def checkin(conn: Any) -> None:
            before(address, conn)
            await original(conn)
        checkin.connman_wrapped = True  # type: ignore[attr-defined]
        pool.checkin = checkin
        return

    def checkin_sync(conn: Any) -> None:  # Motor: PyMongo's synchronous pool, in worker threads
        before(address, conn)
        original(conn)
    checkin_sync.connman_wrapped = True  # type: ignore[attr-defined]
    pool.checkin = checkin_sync


async def shrink(pool: Any, size: int, idle_s: float, lock: Any = None) -> None:
    """Close idle connections of one PyMongo pool above `size` that have been unused `idle_s`
    seconds, the longest unused first, one after another.

    PyMongo's own `maxIdleTimeMS` (connman's `idle`) closes every idle connection, `minPoolSize`
    included, and then reopens up to `minPoolSize`; this keeps `size` and closes only the surplus,
    as the SQL pools do. `pool.conns` is PyMongo's idle deque (most recently used on the left, as
    its own idle reaper reads it); `lock` is the pool's threading lock for Motor, whose worker
    threads use the pool too (PyMongo's async pool is only touched from this event loop).
    """
    while True:
        with lock if lock is not None else contextlib.nullcontext():
            conns = pool.conns
            if (not conns or len(conns) + pool.active_sockets <= size
                    or conns[-1].idle_time_seconds() < idle_s):
                return
            conn = conns.pop()
        closing = conn.close_conn(monitoring.ConnectionClosedReason.IDLE)
        if inspect.isawaitable(closing):
            await closing


def close_client_without_loop(client: Any) -> None:
    """Close the sockets of an `AsyncMongoClient` whose event loop is gone (its `close()` is a
    coroutine of that loop): the idle connections of its server pools and its monitors' pools;
    the client is marked closed. Connections checked out at that moment are left to the GC."""
    for server in list(client._topology._servers.values()):
        monitor = server._monitor
        for pool in (server.pool, monitor._pool, monitor._rtt_monitor._pool):
            for conn in list(pool.conns):
                close_transport_without_loop(conn.conn.conn[0])
    client._closed = True


def server_cursor(cursor: Any, *, stream: bool) -> tuple[str, str, int] | None:
    """(database, collection, cursor id) of the server-side cursor a PyMongo/Motor cursor or
    change stream reads, while there is one; None before it started and once it is exhausted,
    closed or killed."""
    # Motor's objects wrap PyMongo's under `delegate` (None until started); PyMongo's have none.
    d = getattr(cursor, "delegate", cursor)
    if d is None:
        return None
    if stream:
        d = d._cursor
    cid = d.cursor_id
    if not cid or not d.alive:
        return None
    coll = d._collection
    return coll.database.name, coll.name, int(cid)


def app_deadline() -> bool:
    """Whether the app bounds the current call with its own `pymongo.timeout()` block."""
    from pymongo import _csot

    return _csot.get_timeout() is not None
