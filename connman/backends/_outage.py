"""A SQL server's failure as connman's typed error: `ServerUnavailable` or `ConnectionLost`.

The driver modules (`connman.backends.drivers`) say *how* the server failed (by code); this says
what that means for the request:

- at connect (`phase="connect"`), every kind means nothing ran: `ServerUnavailable`, whose `kind`
  is `unreachable` (refused, no route, starting, shutting down, a session ended at login), `full`,
  `read_only` or `locked`;
- during a statement or COMMIT, `read_only`, `locked`, `full` and `unreachable` refusals mean the
  statement did not run and the unit of work rolls back: `ServerUnavailable`;
- `lost` and `ended` while in use: `ConnectionLost`, with `retry_after` only when nothing can have
  been applied (not during COMMIT: `phase="commit"`).

The typed error keeps the class of `wrap` (the exception the app would catch without connman:
SQLAlchemy's `OperationalError`/`DBAPIError`, the driver's own error, or an `OSError`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ..errors import ConnectionLost, ConnmanError, ServerUnavailable, keep_driver_class
from .drivers import Kind, classified

if TYPE_CHECKING:
    from .._pool import Pool

Phase = Literal["connect", "statement", "commit"]

_SAYS: dict[Kind, str] = {
    "unreachable": "the server could not be reached",
    "full": "the server refused a new connection: it is at its connection limit",
    "read_only": ("the server refused the write: it is read-only now (a demoted primary?); the "
                  "pool's connections to it are discarded and new ones follow the pool's URL"),
    "locked": "the database stayed locked by another writer",
    "lost": "the connection to the server was lost while in use",
    "ended": "the server ended the connection while in use",
    "credentials": "the server refused the login (a wrong or rotated password?)",
}


def _reason(pool: Pool, source: BaseException) -> str:
    code = (getattr(source, "sqlstate", None) or getattr(source, "sqlite_errorcode", None)
            or getattr(source, "errno", None))
    if code is None and source.args and isinstance(source.args[0], int):
        code = source.args[0]  # MySQL error number
    words = str(source).strip().splitlines()
    text = words[0][:200] if words else ""
    head = type(source).__name__ + (f" {code}" if code is not None else "")
    return pool.redact(f"{head}: {text}" if text else head)


def typed_error(pool: Pool, exc: BaseException, phase: Phase,
                wrap: BaseException | None = None, *,
                disconnected: bool = False) -> ConnmanError | None:
    """The typed error for a driver error `exc` of `pool`, or None if it is no server failure.

    `wrap`: the exception whose class the result keeps (default `exc`). `disconnected`: the
    connection is known to be gone (SQLAlchemy's `is_disconnect`, a closed driver connection),
    so an error without a code of its own (asyncpg's "connection is closed") is `lost`.
    Never raises.
    """
    if isinstance(exc, ConnmanError) or not isinstance(exc, Exception):
        return None  # typed already; a cancellation stays one
    found = classified(pool.config.driver_name, exc)
    if found is None and disconnected:
        found = ("lost", exc)
    if found is None:
        return None
    kind, source = found
    if phase == "connect" and kind in ("lost", "ended"):
        kind = "unreachable"  # ended while connecting: the server would not take it
    says = _SAYS[kind]
    if kind == "locked":
        says += f" for timeout={pool.config.timeout:g}s"
    message = f"pool {pool.name!r}: {says} ({_reason(pool, source)})"
    retry = pool.config.retry_after_s
    error: ConnmanError
    if kind not in ("lost", "ended"):
        error = ServerUnavailable(message + "; nothing of the request was applied",
                                  pool=pool.name, kind=kind, retry_after=retry)
    elif phase == "commit":
        error = ConnectionLost(message + " during COMMIT: whether it was applied is unknown",
                               pool=pool.name, retry_after=None)
    else:
        error = ConnectionLost(message + "; the unit of work was rolled back",
                               pool=pool.name, retry_after=retry)
    return driver_classed(error, wrap if wrap is not None else exc)


def driver_classed(error: ConnmanError, cause: BaseException) -> ConnmanError:
    """`keep_driver_class(error, cause)`, keeping an `OSError`'s errno and strerror too."""
    if isinstance(error, type(cause)):
        return error  # already that class (a typed error SQLAlchemy wrapped again)
    combined = keep_driver_class(error, cause)
    if isinstance(cause, OSError) and isinstance(combined, OSError):
        combined.errno, combined.strerror = cause.errno, cause.strerror
    return combined


def count(pool: Pool, error: BaseException | None) -> None:
    """Count a request that ended in a typed server failure (`requests_unavailable`,
    `requests_lost`; an unavailable server is a refused request in `requests_errors` too)."""
    if isinstance(error, ServerUnavailable):
        pool.counters.bump("requests_unavailable")
        pool.counters.bump("requests_errors")
    elif isinstance(error, ConnectionLost):
        pool.counters.bump("requests_lost")
