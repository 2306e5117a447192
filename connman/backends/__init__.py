"""Backends: one module per driver family; the only modules that import a driver."""

from __future__ import annotations

import importlib.util

from ..config import PoolConfig
from ..errors import MissingDependency

_MODULES = {
    "asyncpg": ("sqlalchemy", "greenlet", "asyncpg"),
    "psycopg": ("sqlalchemy", "greenlet", "psycopg"),
    "aiomysql": ("sqlalchemy", "greenlet", "aiomysql"),
    "asyncmy": ("sqlalchemy", "greenlet", "asyncmy"),
    "aiosqlite": ("sqlalchemy", "greenlet", "aiosqlite"),
    "pymongo": ("pymongo",),
    "motor": ("pymongo", "motor"),
}


def check_installed(name: str, config: PoolConfig) -> None:
    """Raise `MissingDependency` naming the extra when a pool's driver is not installed."""
    for module in _MODULES[config.driver_name]:
        if importlib.util.find_spec(module) is None:
            raise MissingDependency(
                f"pool {name!r} needs the {module!r} package: "
                f"pip install 'connman[{config.extra}]'", pool=name)
