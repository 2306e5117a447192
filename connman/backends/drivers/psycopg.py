"""psycopg 3 (`postgresql+psycopg://`, its `AsyncConnection`): everything connman knows about it.

The only module that touches psycopg's objects. It uses psycopg's public API and its documented
low-level `psycopg.pq` layer (`PGconn.socket`, `status`, `transaction_status`, `consume_input`,
`finish`); it reaches into nothing else (see `lock` below).

- **kill** (`kill`): no I/O on the connection. psycopg waits for its socket through the event loop,
  so closing the file descriptor under a pending call would leave it waiting forever; the socket is
  shut down instead, which wakes that call with an error at once. A statement still running on the
  server is cancelled first (`cancel_safe`, libpq >= 17; else libpq's blocking cancel on a daemon
  thread): unlike asyncpg, psycopg has no command timeout that would send the cancel itself, and a
  killed client does not stop the server's query.
- **close without the loop** (`close_without_loop`, `terminate`): `PGconn.finish()`, synchronous;
  never while an operation holds the connection's `lock` (psycopg's compiled generators keep
  libpq's pointer meanwhile: freeing it under them crashes the process). `AsyncConnection.lock`
  is the one attribute read that psycopg does not document; a contract test pins it.
- **hang-up check** (`hung_up`): psycopg reads its socket only while a call runs, so a server that
  hung up on an idle connection is seen by polling the socket (no wait) and letting libpq read
  what is there.
- **full reset** (`full_reset`): what `DISCARD ALL` clears, outside a transaction, but for the
  prepared statements, which are psycopg's own cache.
- **connect within a deadline** (`connect_within`): libpq's `connect_timeout` is whole seconds,
  at least 2, per host; connman's deadline covers the whole connect, handshake included.
- **classify** (`classify`): by SQLSTATE (`exc.sqlstate`), never by message text.
- **server limits** (`LIMIT_SQL`, `SERVER_INFO_SQL`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

from . import Kind, postgres_kind

logger = logging.getLogger("connman")

CANCEL_TIMEOUT_S = 10.0
"""How long a server-side cancel sent at a deadline may take (it runs in the background)."""

_cancels: set[asyncio.Future[Any]] = set()


def _pq() -> Any:
    global _PQ
    if _PQ is None:
        from psycopg import pq

        _PQ = pq
    return _PQ


_PQ: Any = None  # psycopg.pq, imported at first use (psycopg is an optional dependency)


# ------------------------------------------------------------------ without I/O
def in_transaction(conn: Any) -> bool:
    """Whether the connection is inside a transaction (or a statement runs on it)."""
    return bool(conn.pgconn.transaction_status != _pq().TransactionStatus.IDLE)


def _readable(fd: int) -> bool:
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])


def hung_up(conn: Any) -> bool:
    """Without waiting: is the connection closed, broken, or has its server hung up?

    An idle connection's socket is readable only when the server sent something on its own: the
    error it sends before it terminates a backend, then the end of the stream (a NOTIFY is the
    other case, and leaves the connection usable). libpq reads what is there without blocking.
    """
    if conn.closed or conn.broken:
        return True
    pq = _pq()
    pgconn = conn.pgconn
    if pgconn.status != pq.ConnStatus.OK:
        return True
    if pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
        return False  # a statement runs: busy, not hung up
    try:
        fd = pgconn.socket
        for _ in range(3):  # the error message, then the end of the stream
            if not _readable(fd):
                return False
            pgconn.consume_input()
            if pgconn.status != pq.ConnStatus.OK:
                return True
    except Exception:  # libpq: "server closed the connection unexpectedly"
        return True
    return False


def _shutdown(sock: socket.socket, then: Callable[[], None] | None = None) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already disconnected
    finally:
        sock.close()
        if then is not None:
            then()


async def _cancel(conn: Any) -> None:
    try:
        await conn.cancel_safe(timeout=CANCEL_TIMEOUT_S)
    except Exception:
        logger.debug("connman: cancelling a statement on the server failed", exc_info=True)


def kill(conn: Any, then: Callable[[], None] | None = None) -> None:
    """Make the connection unusable now, without waiting for the server; a pending call on it
    fails at once. A statement still running is cancelled on the server, in the background.
    `then` runs once the socket is shut down (at once, or right after the cancel request left)."""
    pq = _pq()
    pgconn = conn.pgconn
    if pgconn.status != pq.ConnStatus.OK:
        if then is not None:
            then()
        return
    try:
        fd = pgconn.socket
    except Exception:
        if then is not None:
            then()
        return
    # A duplicate of the descriptor: shutdown acts on the socket itself, and whatever closes the
    # connection meanwhile cannot make this shut down another socket given the same number.
    sock = socket.socket(fileno=os.dup(fd))
    busy = pgconn.transaction_status == pq.TransactionStatus.ACTIVE
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if busy and loop is not None:
        from psycopg import capabilities

        if capabilities.has_cancel_safe():
            # The task's first step opens the cancel connection (libpq copies what it needs
            # from this one); the socket is shut down right after it.
            task = loop.create_task(_cancel(conn))
            _cancels.add(task)
            task.add_done_callback(_cancels.discard)
            loop.call_soon(_shutdown, sock, then)
            return
        with contextlib.suppress(Exception):
            request = pgconn.get_cancel()
            threading.Thread(target=_blocking_cancel, args=(request,), daemon=True,
                             name="connman-psycopg-cancel").start()
    _shutdown(sock, then)


def _blocking_cancel(request: Any) -> None:
    with contextlib.suppress(Exception):
        request.cancel()


def terminate(conn: Any) -> None:
    """Close the connection now, with no round trip and no coroutine: `kill`, then libpq's own
    close. (SQLAlchemy's psycopg adapter has no terminate of its own: it awaits `close()`, which
    outside its greenlet fails and leaves the connection open.)"""
    kill(conn, then=lambda: _finish_when_idle(conn))


def _finish_when_idle(conn: Any) -> None:
    # psycopg's compiled generators keep libpq's connection pointer while an operation runs
    # (its `lock` is held meanwhile): freeing it under them crashes the process. The operation
    # fails on the shut-down socket; libpq's close then runs once psycopg let go of it.
    if not conn.lock.locked():
        close_without_loop(conn)
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop to wait in: the garbage collector frees it once the operation is gone
    task = loop.create_task(_finish_after(conn))
    _cancels.add(task)
    task.add_done_callback(_cancels.discard)


async def _finish_after(conn: Any) -> None:
    async with conn.lock:
        close_without_loop(conn)


def close_without_loop(conn: Any) -> None:
    """Close a connection whose event loop is gone (libpq's close is synchronous)."""
    with contextlib.suppress(Exception):
        conn.pgconn.finish()


# ------------------------------------------------------------------ round trips
async def rollback(conn: Any) -> None:
    """Roll back the transaction the caller left open."""
    await conn.rollback()


async def ping(conn: Any) -> None:
    """One round trip, without opening a transaction (as psycopg_pool's `check_connection`)."""
    if conn.autocommit:
        await conn.execute("")
        return
    await conn.set_autocommit(True)
    try:
        await conn.execute("")
    finally:
        await conn.set_autocommit(False)


# `DISCARD ALL` but for `DEALLOCATE ALL`: the prepared statements are psycopg's own cache (as
# asyncpg's statement cache survives its `reset()`), and psycopg would not always notice them gone.
RESET_SQL = ("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL; "
             "DISCARD PLANS; DISCARD SEQUENCES; DISCARD TEMP")


async def full_reset(conn: Any) -> None:
    """Clear what a unit left on its server session, outside a transaction (the caller rolled it
    back): advisory locks, cursors, LISTEN, session settings, cached plans, sequences, temporary
    tables: `DISCARD ALL` but for psycopg's prepared statements."""
    autocommit = conn.autocommit
    if not autocommit:
        await conn.set_autocommit(True)
    try:
        await conn.execute(RESET_SQL)
    finally:
        if not autocommit:
            await conn.set_autocommit(False)


def autocommit(conn: Any) -> bool:
    """Whether the connection is in autocommit mode."""
    return bool(conn.autocommit)


async def enter_autocommit(conn: Any) -> None:
    """Autocommit on, for a fast-path unit of work (no round trip unless a transaction is open:
    SQLAlchemy's pre-ping leaves one, which is rolled back first)."""
    if conn.pgconn.transaction_status != _pq().TransactionStatus.IDLE:
        await conn.rollback()
    await conn.set_autocommit(True)


async def leave_autocommit(conn: Any) -> None:
    """Autocommit off again, as SQLAlchemy's sessions expect (no round trip)."""
    if conn.autocommit:
        await conn.set_autocommit(False)


def connect_within(seconds: float) -> Callable[..., Any]:
    """`AsyncConnection.connect` bounded by `seconds` (handshake included), for SQLAlchemy's
    `async_creator_fn`; past it asyncio's `TimeoutError` is raised."""
    import psycopg

    async def connected(*args: Any, **kw: Any) -> Any:
        async with asyncio.timeout(seconds):
            return await psycopg.AsyncConnection.connect(*args, **kw)

    return connected


# ------------------------------------------------------------------ configuration
PGBOUNCER_ARGS = {"prepare_threshold": None}
"""Behind PgBouncer in transaction mode: never prepare statements (each transaction may run on
another server connection)."""

LIMIT_SQL = ("SELECT current_setting('max_connections')::int"
             " - current_setting('superuser_reserved_connections')::int")
"""The connections this server accepts from ordinary roles."""


# ------------------------------------------------------------------ errors
def classify(exc: BaseException) -> Kind | None:
    """What a psycopg error says about the server or the connection (None: nothing of that).

    By SQLSTATE, with the table both PostgreSQL drivers share
    (`connman.backends.drivers.POSTGRES_SQLSTATES`). An `OperationalError` with no SQLSTATE:
    unreachable while connecting, lost on a connection in use.

    A connect that the server refused with a FATAL carries no SQLSTATE in psycopg (libpq reports
    connection failures as text only), so there, and only there, the server's own words tell a
    full server (53300) and a refused login (28P01) from an unreachable one; a server whose
    `lc_messages` is not English falls back to `unreachable`, which is also a 503 + Retry-After.
    """
    try:
        import psycopg
    except ImportError:  # pragma: no cover - only called with psycopg's errors
        return None
    if not isinstance(exc, psycopg.Error):
        return None
    code = getattr(exc, "sqlstate", None)
    if code:
        return postgres_kind(code)
    if code is None and isinstance(exc, psycopg.OperationalError):
        # No answer from a server: at connect, it could not be reached; on a connection in use,
        # the connection is gone.
        if not _at_connect(exc):
            return "lost"
        said = str(exc)
        for words, kind in _CONNECT_FATALS:
            if words in said:
                return kind
        return "unreachable"
    return None


_CONNECT_FATALS: tuple[tuple[str, Kind], ...] = (
    ("too many clients already", "full"),                         # 53300
    ("remaining connection slots are reserved", "full"),          # 53300
    ("too many connections for role", "full"),                    # 53300
    ("too many connections for database", "full"),                # 53300
    ("password authentication failed", "credentials"),            # 28P01
    ("no pg_hba.conf entry", "credentials"),                      # 28000
)
"""libpq's text of a FATAL at connect, where psycopg has no SQLSTATE (see `classify`)."""


def _at_connect(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if (frame.f_code.co_name == "connect"
                and str(frame.f_globals.get("__name__", "")).startswith("psycopg")):
            return True
        tb = tb.tb_next
    return False


def may_be_disconnected(exc: BaseException) -> bool | None:
    """For a psycopg error: whether its connection may be broken (None: not a psycopg error).

    psycopg puts query cancellations, deadlocks and lock timeouts under `OperationalError` too;
    those leave the connection usable, so only the lost/ended kinds count.
    """
    try:
        import psycopg
    except ImportError:  # pragma: no cover
        return None
    if not isinstance(exc, psycopg.Error):
        return None
    return classify(exc) in ("lost", "ended", "unreachable") or isinstance(
        exc, psycopg.InterfaceError)
