"""PyMongo's errors, classified into connman's typed errors (the Mongo driver's error knowledge).

The two PyMongo internals this reads (`pymongo._csot`, `_OperationCancelled`) come from
`drivers/pymongo.py`, where PyMongo's and Motor's internals are listed.

Classified by PyMongo's exception classes, error labels and codes, never by message text. Every
typed error is made with `keep_driver_class`, so it is still an instance of the PyMongo class the
app caught before connman (`except PyMongoError`, `except NetworkTimeout`, `except
AutoReconnect`), with PyMongo's error as `__cause__` and its `code`, `details` and labels kept.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any, Protocol

from pymongo.errors import (
    AutoReconnect,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WaitQueueTimeoutError,
    WTimeoutError,
)

from ..config import PoolConfig
from ..errors import (
    CheckoutTimeout,
    ConnectionLost,
    ConnmanError,
    PoolTimeout,
    ServerUnavailable,
    StatementTimeout,
    TransactionConflict,
    keep_driver_class,
)
from ..stats import PoolStats
from .drivers.pymongo import OPERATION_CANCELLED, app_deadline

__all__ = ["AUTHENTICATION_FAILED", "READS", "READ_COMMANDS", "RETRIED_WRITES", "app_deadline",
           "command_op", "conflict", "handshake_refusal", "one_line", "transient", "typed_error"]

# The writes PyMongo retries once (retryable writes): a retry's error may hide a first attempt.
RETRIED_WRITES = frozenset({
    "insert_one", "insert_many", "update_one", "update_many", "replace_one", "delete_one",
    "delete_many", "find_one_and_update", "find_one_and_replace", "find_one_and_delete",
    "bulk_write"})
# Calls that change nothing on the server: cut off midway, nothing of them can have been applied.
# Cursor fetches (`next`, `to_list`, ...) are reads too; `command` and `aggregate` (which may
# `$out`/`$merge`) are not listed: their outcome is unknown.
READS = frozenset({
    "find", "find_one", "find_raw_batches", "count_documents", "estimated_document_count",
    "distinct", "list_indexes", "index_information", "options", "list_collections",
    "list_collection_names", "list_search_indexes", "list_databases", "list_database_names",
    "server_info", "watch", "next", "try_next", "to_list", "__anext__", "explain"})

# Database commands that change nothing (by their name, the command document's first key): a
# `db.command(...)` of one of these cut off midway applied nothing, as a read.
READ_COMMANDS = frozenset({
    "ping", "hello", "ismaster", "buildinfo", "serverstatus", "hostinfo", "dbstats", "collstats",
    "listcollections", "listindexes", "listdatabases", "count", "distinct", "find", "getmore",
    "explain", "connectionstatus", "getparameter", "getcmdlineopts"})


def command_op(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The operation's name for the classification: `command <name>` for `db.command(...)` and
    `db.cursor_command(...)` (the command document's first key, lower-cased), else `name`."""
    if name not in ("command", "cursor_command"):
        return name
    doc = args[0] if args else kwargs.get("command")
    first = doc if isinstance(doc, str) else next(iter(doc), "") if isinstance(doc, Mapping) else ""
    return f"command {str(first).lower()}" if first else name


def _is_read(op: str) -> bool:
    return op in READS or (op.startswith("command ") and op[8:] in READ_COMMANDS)


class _Pool(Protocol):
    """What the classification reads of a pool."""

    name: str
    config: PoolConfig
    counters: PoolStats

    def native(self) -> Any: ...


def transient(error: BaseException) -> bool:
    """Whether a driver error carries the `TransientTransactionError` label."""
    return isinstance(error, PyMongoError) and error.has_error_label("TransientTransactionError")


def conflict(pool: _Pool, error: BaseException, *, at_commit: bool) -> ConnmanError:
    """`TransactionConflict` for a transient error that aborted the unit's transaction."""
    where = "the commit failed with" if at_commit else "the transaction was aborted by"
    return keep_driver_class(TransactionConflict(
        f"pool {pool.name!r}: {where} a transient error ({type(error).__name__}); nothing was "
        "applied, retry the request", pool=pool.name, retry_after=pool.config.retry_after_s),
        error)


def _why(exc: BaseException) -> str:
    # The first line only: PyMongo appends the server's whole reply (`$clusterTime` and its
    # signature bytes) or the topology description to its messages.
    text = str(exc).splitlines()[0][:160] if str(exc) else ""
    text = text.split(", full error:")[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


AUTHENTICATION_FAILED = 18  # the server's code for a failed handshake authentication


def one_line(exc: PyMongoError) -> PyMongoError:
    """`exc`'s class with a one-line message: without the server's raw reply (`full error`:
    `$clusterTime` and its signature bytes) or the topology description PyMongo appends."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for tail in (", full error:", ", Timeout:", ", Topology Description:"):
        text = text.split(tail)[0]
    code = getattr(exc, "code", None)
    if isinstance(exc, OperationFailure):
        if exc.details:
            text = f"{text} ({exc.details.get('codeName') or 'code'} {code})"
        return OperationFailure(text, code=code)
    try:
        return type(exc)(text)
    except Exception:
        return PyMongoError(text)


def handshake_refusal(client: Any) -> PyMongoError | None:
    """The error a server answered the connection handshake with (authentication failed), read
    from the client's public topology description; None while there is none."""
    try:
        description = getattr(client, "delegate", client).topology_description
        servers = list(description.server_descriptions().values())
    except Exception:
        return None
    for sd in servers:
        if isinstance(sd.error, OperationFailure) and sd.error.code == AUTHENTICATION_FAILED:
            return one_line(sd.error)
    return None


def _topology(pool: _Pool) -> str:
    """Why no server was selected, from the client's public topology description:
    "no_primary" (servers answer, none is writable), "silent" (they time out), else "down"."""
    try:
        client = pool.native()
        description = getattr(client, "delegate", client).topology_description
        servers = list(description.server_descriptions().values())
    except Exception:
        return "down"
    from pymongo.server_type import SERVER_TYPE

    if any(sd.server_type != SERVER_TYPE.Unknown for sd in servers):
        return "no_primary"
    if any(isinstance(sd.error, (NetworkTimeout, socket.timeout)) for sd in servers):
        return "silent"
    return "down"


def _refused_at_connect(exc: BaseException) -> bool:
    """An `AutoReconnect` raised while connecting (nothing sent): PyMongo raises it `from` the
    socket's `ConnectionRefusedError` (or another OS error of the connect)."""
    cause = exc.__cause__
    return isinstance(cause, (ConnectionRefusedError, socket.gaierror)) or (
        isinstance(cause, OSError) and cause.errno in _UNREACHABLE_ERRNOS)


def _errnos() -> frozenset[int]:
    import errno

    names = ("ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH", "EHOSTDOWN", "ENETDOWN")
    return frozenset(getattr(errno, n) for n in names if hasattr(errno, n))


_UNREACHABLE_ERRNOS = _errnos()


def typed_error(pool: _Pool, exc: BaseException, *, op: str = "", retried_write: bool = False,
                in_transaction: bool = False, at_commit: bool = False) -> ConnmanError | None:
    """connman's typed error for a PyMongo failure, naming the pool; None for any other error.

    `op` is the driver call that failed (its name), `in_transaction` whether it ran in the unit's
    transaction (which is then aborted: nothing of it is applied), `at_commit` whether it was the
    commit. Counts `requests_unavailable` / `requests_lost`.

    - `NotPrimaryError` (a demoted primary refused it; not applied) and `ServerSelectionTimeoutError`
      with servers that answer but none writable -> `ServerUnavailable(kind="read_only")`.
    - `ServerSelectionTimeoutError` with every server down (refused, unreachable) ->
      `ServerUnavailable(kind="unreachable")`; with servers that time out -> `CheckoutTimeout`:
      nothing was sent. (When a retried operation's retry finds no server, PyMongo raises the
      first attempt's error instead.)
    - `AutoReconnect` raised by the connect (`from` a refused/unreachable socket) -> unreachable;
      any other `AutoReconnect` (a reset mid-operation) -> `ConnectionLost`, with `retry_after`
      only when nothing can have been applied: a read, or inside the transaction being aborted.
    - `WaitQueueTimeoutError` -> `PoolTimeout` (every driver connection in use, some outside the
      gate); on a write PyMongo retries -> `StatementTimeout` (the first attempt may have applied).
    - any other timeout -> `StatementTimeout` (its connection was closed; a write outside a
      transaction may have been applied), except under the app's own `pymongo.timeout()`: that
      timeout is the app's and stays PyMongo's error, untouched.
    - PyMongo's `_OperationCancelled` (its monitor got no reply and interrupted the operation)
      -> `StatementTimeout`.
    A write-concern timeout (`WTimeoutError`) is an answer, not a silent server: it stays PyMongo's.
    """
    if not isinstance(exc, PyMongoError) or isinstance(exc, WTimeoutError):
        return None
    typed = _classify(pool, exc, op=op, retried_write=retried_write,
                      in_transaction=in_transaction, at_commit=at_commit)
    if typed is None:
        return None
    if isinstance(typed, ServerUnavailable):
        pool.counters.add("requests_unavailable")
    elif isinstance(typed, ConnectionLost):
        pool.counters.add("requests_lost")
    return keep_driver_class(typed, exc)


def _classify(pool: _Pool, exc: PyMongoError, *, op: str, retried_write: bool,
              in_transaction: bool, at_commit: bool) -> ConnmanError | None:
    name, cfg = pool.name, pool.config
    why = _why(exc)
    if isinstance(exc, NotPrimaryError):
        return ServerUnavailable(
            f"pool {name!r}: the server is not the primary (a step-down or failover) and refused "
            f"this operation; nothing was applied, retry the request ({why})",
            pool=name, kind="read_only", retry_after=cfg.retry_after_s)
    if isinstance(exc, WaitQueueTimeoutError) and retried_write:
        # PyMongo raises the retry's checkout error as is, not the first attempt's: that
        # attempt may have been applied.
        return StatementTimeout(
            f"pool {name!r}: a write PyMongo retries could not get a driver connection in "
            "time; if that was its retry, the first attempt may have been applied (PyMongo does "
            f"not say which): its outcome is unknown ({why})", pool=name)
    if isinstance(exc, WaitQueueTimeoutError):
        return PoolTimeout(
            f"pool {name!r}: every driver connection is in use, some outside connman's "
            f"sessions ({type(exc).__name__})", pool=name, retry_after=cfg.retry_after_s)
    if isinstance(exc, ServerSelectionTimeoutError):
        state = _topology(pool)
        if state == "no_primary":
            return ServerUnavailable(
                f"pool {name!r}: no primary within connect_timeout ({cfg.connect_timeout:g} s): "
                "the server answers but does not accept writes (a step-down or election); "
                "nothing was sent, retry the request", pool=name, kind="read_only",
                retry_after=cfg.retry_after_s)
        if state == "down":
            return ServerUnavailable(
                f"pool {name!r}: the server is unreachable (refused or down) and none came up "
                f"within connect_timeout ({cfg.connect_timeout:g} s); nothing was sent",
                pool=name, kind="unreachable", retry_after=cfg.retry_after_s)
        return CheckoutTimeout(
            f"pool {name!r}: no server answered within connect_timeout "
            f"({cfg.connect_timeout:g} s); nothing was sent ({type(exc).__name__})",
            pool=name, retry_after=cfg.retry_after_s)
    if exc.timeout:
        if app_deadline():
            return None
        limit = (f"statement_timeout ({cfg.statement_timeout:g} s)"
                 if cfg.statement_timeout is not None else "the driver's timeout")
        return StatementTimeout(
            f"pool {name!r}: an operation got no answer within {limit}; its connection was "
            f"closed; outside a transaction a write may have been applied ({why})", pool=name)
    if isinstance(exc, OPERATION_CANCELLED):
        # PyMongo's monitor got no answer from the server within connect_timeout and interrupted
        # the operations on its connections (CMAP's interruptInUseConnections).
        return StatementTimeout(
            f"pool {name!r}: the server stopped answering (PyMongo's monitor got no reply within "
            f"connect_timeout, {cfg.connect_timeout:g} s, and interrupted this operation); its "
            "connection was closed; outside a transaction a write may have been applied",
            pool=name)
    if isinstance(exc, AutoReconnect):
        if _refused_at_connect(exc):
            return ServerUnavailable(
                f"pool {name!r}: the server refused the connection or could not be reached; "
                f"nothing was sent, retry the request ({why})", pool=name, kind="unreachable",
                retry_after=cfg.retry_after_s)
        nothing_applied = not at_commit and (in_transaction or _is_read(op))
        outcome = ("nothing of it was applied" if nothing_applied else
                   "the commit's outcome is unknown" if at_commit else
                   "a write may have been applied")
        return ConnectionLost(
            f"pool {name!r}: the connection was lost during {op or 'an operation'}; "
            f"{outcome} ({why})", pool=name,
            retry_after=cfg.retry_after_s if nothing_applied else None)
    return None
