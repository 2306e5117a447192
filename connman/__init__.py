"""connman: one async connection manager for SQLAlchemy and MongoDB pools in FastAPI services."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._credentials import ConnectTarget
from ._pool import Pool
from ._url import SecretURL, mask_url
from .config import PRESETS, ConnmanSettings, PoolConfig, load_settings
from .errors import (
    CheckoutTimeout,
    ConcurrentUse,
    ConfigurationError,
    ConnectionLost,
    ConnmanError,
    MissingDependency,
    PoolClosed,
    PoolNotOpen,
    PoolStartupError,
    PoolTimeout,
    ServerUnavailable,
    SessionEnded,
    SessionInWebSocket,
    StatementTimeout,
    TooManyWaiters,
    TransactionConflict,
    UnknownPool,
    WrongEventLoop,
    keep_driver_class,
)
from .manager import ConnectionManager, SessionProvider
from .stats import COUNTER_KEYS, EVENT_NAMES, GAUGE_KEYS, STAT_KEYS, PoolEvent

__version__ = "0.1.0"

__all__ = [
    # stats and events
    "COUNTER_KEYS",
    "EVENT_NAMES",
    "GAUGE_KEYS",
    # configuration
    "PRESETS",
    "STAT_KEYS",
    # errors
    "CheckoutTimeout",
    "ConcurrentUse",
    "ConfigurationError",
    "ConnectTarget",
    "ConnectionLost",
    # manager
    "ConnectionManager",
    "ConnmanError",
    "ConnmanSettings",
    "MissingDependency",
    "MongoUnit",
    "Pool",
    "PoolClosed",
    "PoolConfig",
    "PoolEvent",
    "PoolNotOpen",
    "PoolStartupError",
    "PoolTimeout",
    "SecretURL",
    "ServerUnavailable",
    "SessionEnded",
    "SessionInWebSocket",
    "SessionProvider",
    "StatementTimeout",
    "TooManyWaiters",
    "TransactionConflict",
    "UnknownPool",
    "WrongEventLoop",
    "keep_driver_class",
    "load_settings",
    "mask_url",
]

if TYPE_CHECKING:
    from .backends._mongo_unit import MongoUnit


def __getattr__(name: str) -> Any:
    # `MongoUnit` needs PyMongo (the `mongo` extra): imported when first asked for.
    if name == "MongoUnit":
        from .backends._mongo_unit import MongoUnit

        return MongoUnit
    raise AttributeError(f"module 'connman' has no attribute {name!r}")


for _name in __all__:
    if _name == "MongoUnit":
        continue
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = "connman"
del _name, _obj
