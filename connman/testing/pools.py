"""Typed accessors for a manager's pools, for tests under `mypy --strict`.

`manager.pool(name)` is typed as the base `Pool`; a test that reads a Mongo pool's `database` or a
SQL pool's `binding` would need a cast. These return the backend's class, or raise `TypeError`
naming the pool and what it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..backends.mongo import MongoPool
    from ..backends.sqlalchemy import SQLAlchemyPool
    from ..manager import ConnectionManager

__all__ = ["mongo_pool", "sql_pool"]


def mongo_pool(manager: ConnectionManager, name: str) -> MongoPool:
    """Pool `name` of `manager` as a `MongoPool` (`.database`, `.database_name`, `.native()`).

    Raises `UnknownPool` for a name the manager lacks, `TypeError` for a pool of another backend.
    """
    from ..backends.mongo import MongoPool

    pool = manager.pool(name)
    if not isinstance(pool, MongoPool):
        raise TypeError(f"pool {pool.name!r} is a {type(pool).__name__}, not a MongoPool")
    return pool


def sql_pool(manager: ConnectionManager, name: str) -> SQLAlchemyPool:
    """Pool `name` of `manager` as a `SQLAlchemyPool` (`.binding`, `.off_books()`).

    Raises `UnknownPool` for a name the manager lacks, `TypeError` for a pool of another backend.
    """
    from ..backends.sqlalchemy import SQLAlchemyPool

    pool = manager.pool(name)
    if not isinstance(pool, SQLAlchemyPool):
        raise TypeError(f"pool {pool.name!r} is a {type(pool).__name__}, not a SQLAlchemyPool")
    return pool
