"""The errors connman raises. Every error names the pool it concerns, never its password."""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "ConnmanError",
    "MissingDependency",
    "PoolClosed",
    "PoolStartupError",
    "PoolTimeout",
    "TooManyWaiters",
    "UnknownPool",
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


class TooManyWaiters(PoolTimeout):
    """`max_waiting` requests already wait for this pool, so this one is refused at once."""


class PoolClosed(ConnmanError):
    """The pool is closed (or closing) and hands out no more connections."""


class PoolStartupError(ConnmanError):
    """A pool could not be opened at startup; names the pool and its masked URL."""
