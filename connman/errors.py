"""The errors connman raises. Every error names the pool it concerns, never its password."""

from __future__ import annotations

__all__ = [
    "CheckoutTimeout",
    "ConcurrentUse",
    "ConfigurationError",
    "ConnectionLost",
    "ConnmanError",
    "MissingDependency",
    "PoolClosed",
    "PoolNotOpen",
    "PoolStartupError",
    "PoolTimeout",
    "ServerUnavailable",
    "SessionEnded",
    "SessionInWebSocket",
    "StatementTimeout",
    "TooManyWaiters",
    "TransactionConflict",
    "UnknownPool",
    "WrongEventLoop",
    "keep_driver_class",
]


class ConnmanError(Exception):
    """Base class of every error connman raises."""

    def __init__(self, message: str, *, pool: str | None = None) -> None:
        super().__init__(message)
        self.pool = pool

    def __str__(self) -> str:
        # A class made by `keep_driver_class` also derives from the driver's error, whose own
        # `__str__` (SQLAlchemy's statement dump, PyMongo's reply) comes later in the MRO.
        return str(self.args[0]) if self.args else ""


_MIXED: dict[tuple[type[BaseException], type[BaseException]], type[BaseException] | None] = {}


def keep_driver_class(error: ConnmanError, cause: BaseException) -> ConnmanError:
    """Return `error` as an instance of both its own class and `type(cause)`, with `cause` as
    its `__cause__`.

    Adopting connman must not change what an app's own `except` clauses catch: an app that
    catches `sqlalchemy.exc.OperationalError` or `pymongo.errors.PyMongoError` around its calls
    still catches connman's `StatementTimeout`, `PoolUnavailable`, ... raised for that driver
    error, while `except StatementTimeout` (or any `ConnmanError`) catches it too. The new
    instance carries the driver error's attributes (`orig`, `code`, `details`, error labels) and
    connman's (`pool`, `retry_after`); `str()` is connman's message, which names the pool.

    The combined class is made once per pair and cached. Where Python cannot combine the two
    classes (an instance layout conflict between two built-in bases), `error` is returned as it
    is, with `cause` as its `__cause__`.
    """
    own, driver = type(error), type(cause)
    if isinstance(error, driver):
        error.__cause__ = cause
        return error
    key = (own, driver)
    if issubclass(driver, own):
        # `cause` is connman's same error, typed at a lower level for a driver error: its class
        # already is own + the driver's.
        _MIXED[key] = driver
    elif issubclass(driver, ConnmanError):
        # connman's other error for a driver error: keep the driver's class it carries, not
        # connman's own twice.
        driver = next(c for c in driver.__mro__
                      if issubclass(c, BaseException) and not issubclass(c, ConnmanError))
        if isinstance(error, driver):
            error.__cause__ = cause
            return error
        key = (own, driver)
    if key not in _MIXED:
        try:
            _MIXED[key] = type(own.__name__, (own, driver), {
                "__module__": own.__module__,
                "__qualname__": own.__qualname__,
                "__doc__": own.__doc__,
            })
        except TypeError:
            _MIXED[key] = None
    mixed = _MIXED[key]
    if mixed is None:
        error.__cause__ = cause
        return error
    combined = mixed.__new__(mixed)  # neither class's __init__: both states are copied below
    combined.args = error.args
    combined.__dict__.update(cause.__dict__)
    combined.__dict__.update(error.__dict__)
    combined.__cause__ = cause
    combined.__traceback__ = error.__traceback__
    return combined  # type: ignore[return-value]


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


class SessionInWebSocket(ConnmanError, TypeError):
    """`Depends(manager.session(name))` was resolved for a websocket route.

    A websocket lives as long as its client stays connected: a unit of work injected into it would
    hold a pool slot (and, on SQL, an open transaction whose writes nobody else sees) for that
    whole time, so two idle sockets starve a pool of 2. The route opens one unit per message
    instead: `async with manager.session(name) as db:` inside its receive loop. Through FastAPI
    the handshake is refused with an HTTP 503 naming the pool and that pattern, before any
    connection is taken.
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


class ServerUnavailable(ConnmanError):
    """The pool's server could not take this request and nothing of it was applied, so a retry
    is safe: FastAPI answers 503 with `Retry-After` (seconds).

    `kind` says why, classified from the driver's error code, never its message text:
    `"unreachable"` (connection refused, no route, the server is restarting), `"full"` (the
    server's connection limit: PostgreSQL SQLSTATE 53300, MySQL 1040/1203), `"read_only"` (a
    demoted primary: SQLSTATE 25006, MySQL 1290/1792, Mongo `NotPrimaryError`), `"locked"` (SQLite
    waited `timeout` for another writer's lock), `"down"` (a pool that could not open is still
    trying in the background), `"credentials"` (the pool's `credentials` provider failed, so no
    connection was opened). `since` is the wall-clock time (`time.time()`, seconds) the pool
    first saw it so, when known. The driver's error is the `__cause__`.
    """

    def __init__(self, message: str, *, pool: str, kind: str, retry_after: int = 1,
                 since: float | None = None) -> None:
        super().__init__(message, pool=pool)
        self.kind = kind
        self.retry_after = retry_after
        self.since = since


class ConnectionLost(ConnmanError):
    """The server ended this unit's connection while it was in use (a terminated backend,
    `idle_in_transaction_session_timeout`, a restart, a reset socket); the connection was
    discarded.

    `retry_after` (seconds) is set when nothing of the unit can have been applied (the server
    rolled the open transaction back), and None when the outcome is unknown (the connection was
    lost during COMMIT); FastAPI answers 503, with `Retry-After` only in the first case.
    """

    def __init__(self, message: str, *, pool: str, retry_after: int | None = None) -> None:
        super().__init__(message, pool=pool)
        self.retry_after = retry_after
