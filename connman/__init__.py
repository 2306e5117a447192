"""connman: one async connection manager for SQLAlchemy and MongoDB pools in FastAPI services."""

from __future__ import annotations

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

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = "connman"
del _name, _obj
