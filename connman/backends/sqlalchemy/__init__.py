"""SQLAlchemy async engines (asyncpg, psycopg, aiomysql, asyncmy, aiosqlite) behind the connman pool.

A package whose modules each have one job; this module re-exports the names imported from
`connman.backends.sqlalchemy` elsewhere (see docs/architecture.md for the layout).
"""

from .pool import SQLAlchemyPool, UnitHook
from .probes import ALIVE_BYPASS_S

__all__ = ["ALIVE_BYPASS_S", "SQLAlchemyPool", "UnitHook"]
