"""The SQL pool's options: a pool config as `create_async_engine` and `async_sessionmaker`
keywords (the mapping table, as code), with connman's own pool class (`ledger.LedgerPool`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession

from ...config import PoolConfig
from ...errors import ConfigurationError
from ..drivers import psycopg as _psycopg
from .ledger import LedgerPool

_CONNECT_TIMEOUT_ARG = {"asyncpg": "timeout", "aiomysql": "connect_timeout",
                        "asyncmy": "connect_timeout"}


def engine_options(name: str, config: PoolConfig) -> dict[str, Any]:
    """The `create_async_engine` keywords for a pool config: the mapping table, as code."""
    driver = config.driver_name
    if config.size < 1:
        raise ConfigurationError(
            f"pool {name!r}: size: must be at least 1 for SQL pools "
            "(SQLAlchemy reads pool_size=0 as 'no limit')", pool=name, field="size")
    url = config.url.get_secret_value()
    if driver == "aiosqlite" and (":memory:" in url or url.rstrip("/").endswith("sqlite+aiosqlite:")):
        raise ConfigurationError(
            f"pool {name!r}: url: an in-memory SQLite database cannot be pooled; use a file",
            pool=name, field="url")
    opts = dict(config.options)
    if "poolclass" in opts or "pool" in opts:
        key = "poolclass" if "poolclass" in opts else "pool"
        raise ConfigurationError(
            f"pool {name!r}: options[{key!r}]: connman keeps the pool's connections itself (one "
            "list the gate admits every checkout to); set its bounds with 'size' and 'overflow'",
            pool=name, field="options")
    raw_args = opts.pop("connect_args", None) or {}
    if not isinstance(raw_args, dict):
        raise ConfigurationError(f"pool {name!r}: options: 'connect_args' must be a mapping",
                                 pool=name, field="options")
    connect_args: dict[str, Any] = dict(raw_args)
    arg = _CONNECT_TIMEOUT_ARG.get(driver)
    if arg is not None:
        connect_args.setdefault(arg, config.connect_timeout)
    elif driver == "aiosqlite":
        # sqlite3's `timeout` is how long a writer waits for the file lock: the same promise as
        # `timeout` (wait for the database, then fail), instead of sqlite3's own 5 s.
        connect_args.setdefault("timeout", config.timeout)
    if config.statement_timeout is not None and driver == "asyncpg":
        # asyncpg's own per-call deadline (queries, BEGIN/COMMIT/ROLLBACK); the other drivers
        # have none that works on a silent server, so connman bounds their calls itself.
        connect_args.setdefault("command_timeout", config.statement_timeout)
    if config.external_pooler == "pgbouncer":
        # Transaction pooling hands each transaction a different server connection, so named
        # prepared statements cannot be reused: turn off both asyncpg's and SQLAlchemy's caches,
        # or psycopg's preparing altogether.
        if driver == "psycopg":
            for key, value in _psycopg.PGBOUNCER_ARGS.items():
                connect_args.setdefault(key, value)
        else:
            connect_args.setdefault("statement_cache_size", 0)
            connect_args.setdefault("prepared_statement_cache_size", 0)
    kw: dict[str, Any] = {
        # connman's ledger holds up to `size + overflow` (SQLAlchemy's keywords, as the mapping
        # table says); none is closed as "overflow" the moment it comes back (a reconnect storm on
        # every burst): connman's maintenance closes what is above `size` once idle for
        # `overflow_idle`, and the warm-up opens exactly `size`.
        "pool_size": config.max_size,
        "max_overflow": 0,
        # LIFO (the ledger always is): a light load reuses the same few connections, so the
        # surplus stays idle long enough to be closed (FIFO would keep every one open).
        "pool_use_lifo": True,
        # Reported by `pool.timeout()` only: the ledger never waits, the gate does.
        "pool_timeout": config.timeout + 1.0,
        "pool_recycle": int(config.recycle) if config.recycle is not None else -1,
        "pool_pre_ping": config.pre_ping,
        "echo": config.echo,
        "poolclass": LedgerPool,
        "pool_reset_on_return": "rollback",
    }
    if connect_args:
        kw["connect_args"] = connect_args
    kw.update(opts)
    return kw


def session_options(name: str, config: PoolConfig) -> dict[str, Any]:
    """The `async_sessionmaker` keywords for a pool config (`class_` from `session_class`).

    Checked now, by making one unbound session: an option the session class does not take
    would otherwise fail on the first request, not at startup.
    """
    cls = config.session_class or AsyncSession
    if not issubclass(cls, AsyncSession):
        raise ConfigurationError(
            f"pool {name!r}: session_class: {cls.__module__}.{cls.__qualname__} is not a "
            "subclass of sqlalchemy.ext.asyncio.AsyncSession", pool=name, field="session_class")
    kw: dict[str, Any] = {"expire_on_commit": False, **config.session_options}
    try:
        cls(**kw)
    except (TypeError, sa_exc.ArgumentError) as exc:
        raise ConfigurationError(f"pool {name!r}: session_options: {exc}", pool=name,
                                 field="session_options") from None
    return {"class_": cls, **kw}
