"""What connman knows about each SQL driver, one module per driver, behind one small interface.

Each module `connman.backends.drivers.<module>` defines `classify(exc) -> Kind | None`: how a
server failed a request, read from the driver's error *code* (a PostgreSQL SQLSTATE, a MySQL error
number, a SQLite result code, an `OSError`'s errno), never from its message text. Modules may also
hold the driver's other internals (kill a connection without I/O, tell that its server hung up,
interrupt a statement, close it without its event loop); each private attribute they reach is
listed in the module's docstring with why, and `tests/test_drivers.py` or `tests/test_reaches.py`
fails if it disappears or changes meaning. `drivers/pymongo.py` holds PyMongo's and Motor's.

Private attributes of asyncio reached here (checked by tests/test_reaches.py):

- `selector_events._SelectorTransport._sock` and `._closing`: `close_transport_without_loop`
  closes the socket of a transport whose event loop is gone (its `close()`/`abort()` schedule the
  close on that loop, which never runs it) and marks the transport closed, as its own
  `_call_connection_lost` would: `_sock = None` (so its finalizer does not warn "unclosed
  transport"), `_closing = True` (what `is_closing()` returns). No public call closes a transport
  without its loop.

`classify(driver, exc)` dispatches by driver name (`PoolConfig.driver_name`) and looks through
SQLAlchemy's wrapping: `DBAPIError.orig` and `__cause__` chains.
"""

from __future__ import annotations

import errno
import importlib
import select
import socket
from asyncio import selector_events
from collections.abc import Callable, Iterator
from typing import Any, Literal

__all__ = [
    "KINDS",
    "POSTGRES_SQLSTATES",
    "Kind",
    "classified",
    "classify",
    "close_transport_without_loop",
    "os_kind",
    "peer_hung_up",
    "postgres_kind",
]

Kind = Literal["unreachable", "full", "read_only", "locked", "lost", "ended", "credentials"]
"""How a server failed a request:

- `unreachable`: no connection could be made (refused, no route, the server is starting or
  shutting down); nothing ran.
- `full`: the server refused a new connection at its connection limit; nothing ran.
- `read_only`: the server refused a write because it is read-only now (a demoted primary).
- `locked`: the database waited its lock timeout for another writer (SQLite); the statement did
  not run.
- `lost`: the connection broke while in use (reset, closed mid-statement).
- `ended`: the server ended the session on purpose (terminated backend, idle-in-transaction
  timeout, shutdown).
- `credentials`: the server refused the login (a wrong or expired password: a credential that
  rotated on the server before the app's secret source caught up); nothing ran.
"""
KINDS: tuple[Kind, ...] = ("unreachable", "full", "read_only", "locked", "lost", "ended",
                           "credentials")

POSTGRES_SQLSTATES: dict[str, Kind] = {
    "53300": "full",         # too_many_connections
    "53400": "full",         # configuration_limit_exceeded
    "57P03": "unreachable",  # cannot_connect_now: starting up, shutting down, in recovery
    "08001": "unreachable",  # sqlclient_unable_to_establish_sqlconnection
    "08004": "unreachable",  # sqlserver_rejected_establishment_of_sqlconnection
    "25006": "read_only",    # read_only_sql_transaction: a demoted primary
    "57P01": "ended",        # admin_shutdown: a terminated backend
    "57P02": "ended",        # crash_shutdown
    "57P04": "ended",        # database_dropped
    "25P03": "ended",        # idle_in_transaction_session_timeout
    "57P05": "ended",        # idle_session_timeout
    "28P01": "credentials",  # invalid_password
    "28000": "credentials",  # invalid_authorization_specification
}
"""PostgreSQL's SQLSTATEs by kind: the server's, whichever driver (asyncpg, psycopg) carries them."""


def postgres_kind(code: str) -> Kind | None:
    """The kind of a PostgreSQL SQLSTATE; any other of class 08 (connection exception) is `lost`."""
    kind = POSTGRES_SQLSTATES.get(code)
    if kind is None and code.startswith("08"):
        kind = "lost"
    return kind


def peer_hung_up(transport: object) -> bool:
    """Without I/O: whether the server's end of the stream already waits in the kernel.

    A server that ends a session says why (PostgreSQL's FATAL 57P01, MySQL's error 4031), then
    hangs up; the loop reads the two at its next polls, and a task that checks a connection out
    in between would find it open (asyncpg's protocol is then stuck: "another operation is in
    progress"). On Linux, `poll(POLLRDHUP)` with a zero timeout tells the peer's shutdown even
    behind unread data; elsewhere, a non-blocking `recv(MSG_PEEK)` tells it once the data before
    it is read. A socket error: True. No socket (closed, not asyncio): False, the driver's own
    flags tell that.
    """
    get_extra_info = getattr(transport, "get_extra_info", None)
    sock = get_extra_info("socket") if get_extra_info is not None else None
    if sock is None:
        return False
    fd = sock.fileno()
    if fd < 0:
        return True
    if _POLLRDHUP is not None:
        poller = select.poll()
        poller.register(fd, _POLLRDHUP)  # POLLHUP, POLLERR, POLLNVAL are always reported
        return bool(poller.poll(0))
    # A socket object over the same descriptor, detached after: no dup, no close, and the
    # descriptor's blocking mode is left alone (MSG_DONTWAIT makes this one call not wait).
    peek = socket.socket(sock.family, sock.type, sock.proto, fd)
    try:
        return peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
    finally:
        peek.detach()


_POLLRDHUP: int | None = getattr(select, "POLLRDHUP", None)  # Linux only


# asyncio's base class of its selector transports (TCP, Unix): private, not in typeshed.
_SELECTOR_TRANSPORT: type[Any] = selector_events._SelectorTransport  # type: ignore[attr-defined]


def close_transport_without_loop(transport: Any) -> bool:
    """Close an asyncio transport's socket without its event loop (which may be closed).

    Returns whether a socket was closed: False for None, a transport already closed, or one that
    is not a selector transport (uvloop's, or TLS over one): those keep their socket out of
    reach and are left to the garbage collector.
    """
    if not isinstance(transport, _SELECTOR_TRANSPORT):
        return False
    sock = transport._sock
    if sock is None:  # asyncio already closed it (`_call_connection_lost` ran)
        return False
    sock.close()
    transport._sock = None
    transport._closing = True
    return True


# driver name (PoolConfig.driver_name) -> module of this package
_MODULES = {
    "asyncpg": "asyncpg",
    "aiomysql": "mysql",
    "asyncmy": "mysql",
    "aiosqlite": "sqlite",
    "psycopg": "psycopg",
}
_CLASSIFIERS: dict[str, Callable[[BaseException], Kind | None] | None] = {}

_UNREACHABLE_ERRNOS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                                 errno.EHOSTDOWN, errno.ENETDOWN, errno.EADDRNOTAVAIL,
                                 errno.ENOENT})  # ENOENT: a Unix socket that is not there
_LOST_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ESHUTDOWN})


def os_kind(exc: BaseException) -> Kind | None:
    """The kind of an OS-level socket error: refused/no route/unknown host -> `unreachable`,
    reset/broken pipe -> `lost`; None for anything else (a timeout included: connman's deadlines
    type those)."""
    if isinstance(exc, socket.gaierror):
        return "unreachable"
    if not isinstance(exc, OSError) or isinstance(exc, TimeoutError):
        return None
    if isinstance(exc, ConnectionRefusedError) or exc.errno in _UNREACHABLE_ERRNOS:
        return "unreachable"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)) or (
            exc.errno in _LOST_ERRNOS):
        return "lost"
    return None


def _classifier(driver: str) -> Callable[[BaseException], Kind | None] | None:
    if driver not in _CLASSIFIERS:
        module = _MODULES.get(driver)
        fn: Callable[[BaseException], Kind | None] | None = None
        if module is not None:
            try:
                fn = importlib.import_module(f"{__name__}.{module}").classify
            except ImportError:  # the driver (or its module) is not installed
                fn = None
        _CLASSIFIERS[driver] = fn
    return _CLASSIFIERS[driver]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it wraps: SQLAlchemy's `orig` and the `__cause__` chain (depth-first)."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < 16:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        cause, orig = e.__cause__, getattr(e, "orig", None)
        if cause is not None:
            todo.append(cause)
        if isinstance(orig, BaseException):
            todo.append(orig)  # popped first: the driver's error SQLAlchemy wrapped


def classified(driver: str, exc: BaseException) -> tuple[Kind, BaseException] | None:
    """Like `classify`, with the error in the chain that gave the answer (the driver's own)."""
    fn = _classifier(driver)
    for e in _chain(exc):
        kind = fn(e) if fn is not None else os_kind(e)
        if kind is not None:
            return kind, e
    return None


def classify(driver: str, exc: BaseException) -> Kind | None:
    """How the server failed a request, from a driver's error (or SQLAlchemy's wrapper of it).

    Returns a `Kind`, or None when `exc` is not a server failure connman types (a syntax error,
    a constraint violation, an authentication failure, a timeout). `driver` is the pool's
    `PoolConfig.driver_name`; an unknown driver classifies OS-level socket errors only.
    """
    found = classified(driver, exc)
    return found[0] if found is not None else None
