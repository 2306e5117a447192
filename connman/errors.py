"""The errors connman raises. Every error names the pool it concerns, never its password."""

from __future__ import annotations

__all__ = [
    "CheckoutTimeout",
    "ConcurrentUse",
    "ConfigurationError",
    "ConnmanError",
    "MissingDependency",
    "PoolClosed",
    "PoolNotOpen",
    "PoolStartupError",
    "PoolTimeout",
    "SessionEnded",
    "StatementTimeout",
    "TooManyWaiters",
    "TransactionConflict",
    "UnknownPool",
    "WrongEventLoop",
]


class ConnmanError(Exception):
    """Base class of every error connman raises."""

    def __init__(self, message: str, *, pool: str | None = None) -> None:
        super().__init__(message)
        self.pool = pool


class ConfigurationError(ConnmanError, ValueError):
    """A pool's configuration is invalid; the message names the pool and the field."""

    def __init__(self, message: str, *, pool: str | None = None, field: str | None = None) -> None:
        super().__init__(message, pool=pool)
        self.field = field


class MissingDependency(ConnmanError, ImportError):
    """A driver a pool needs is not installed; the message names the extra to install."""


class UnknownPool(ConnmanError, KeyError):
    """No pool has this name; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


class PoolTimeout(ConnmanError, TimeoutError):
    """No connection became free within the pool's `timeout`."""

    def __init__(self, message: str, *, pool: str, retry_after: int = 1) -> None:
        super().__init__(message, pool=pool)
        self.retry_after = retry_after


class CheckoutTimeout(PoolTimeout):
    """A slot was free, but the server did not answer the connect or the pre-ping within the pool's
    `connect_timeout` (seconds); that connection was discarded.

    A `PoolTimeout`, so FastAPI answers 503 + `Retry-After`: no statement ran, a retry is safe.
    """


class TooManyWaiters(PoolTimeout):
    """`max_waiting` requests already wait for this pool, so this one is refused at once."""


class PoolClosed(ConnmanError):
    """The pool is closed (or closing) and hands out no more connections."""


class PoolStartupError(ConnmanError):
    """A pool could not be opened at startup; names the pool and its masked URL."""


class PoolNotOpen(PoolClosed):
    """The pool was never opened (the app's lifespan did not run) or was closed before this call."""


class SessionEnded(ConnmanError):
    """A session or fast-path connection was used after its unit of work ended.

    Its connection went back to the pool when the unit ended; using it again would take a
    connection past the pool's limits. Open a new unit of work instead.
    """


class ConcurrentUse(ConnmanError):
    """Two tasks used one session or one fast-path connection at the same time.

    A session is one unit of work on one connection: give each task its own
    (`async with manager.session(name)`), or await the operations one after the other.
    """


class WrongEventLoop(ConnmanError, RuntimeError):
    """The pool was opened in another event loop; its driver connections cannot be used here."""


class StatementTimeout(ConnmanError, TimeoutError):
    """An operation got no answer within the pool's `statement_timeout` (seconds).

    The connection it ran on was discarded (its protocol state is unknown) and the unit of work
    rolled back.
    """


class TransactionConflict(ConnmanError):
    """A Mongo unit of work's transaction was aborted by a transient error (a write conflict, a
    failover, a commit the server refused as transient): nothing of it was applied, and running the
    whole unit again may succeed. FastAPI answers 503 with `Retry-After` (seconds)."""

    def __init__(self, message: str, *, pool: str, retry_after: int = 1) -> None:
        super().__init__(message, pool=pool)
        self.retry_after = retry_after
