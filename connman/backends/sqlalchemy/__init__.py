"""SQLAlchemy async engines (asyncpg, psycopg, aiomysql, asyncmy, aiosqlite) behind the connman pool.

Maps the schema to `create_async_engine` keywords, feeds the stats from pool events, and emulates
what SQLAlchemy lacks: an idle timeout, lifetime jitter (both checked at checkout, where
`pool_recycle` is checked) and counted reasons for every closed connection.

One job a module (each imports only those above it):

- `probes`: per-driver questions to a raw connection (closed? in a transaction?), the pre-ping
  bypass window, whether a driver error may mean a broken connection.
- `ledger`: `LedgerPool`, the one list of the pool's connections (a `sqlalchemy.pool.Pool` whose
  every checkout is admitted through the gate) and `Lifetime`, the lifetime rules.
- `options`: a pool config as engine and session keywords (with `LedgerPool` as the pool class).
- `connect`: each driver's connect, bounded and safe against a cancelled caller.
- `deadlines`: per-driver kill, driver calls within a deadline, emulated `statement_timeout`.
- `state`: `PoolState`, the attributes the parts share; `UnitHook` (the test binding's type).
- `events`: SQLAlchemy's engine and pool events as connman's lifetime rules, stats, typed errors.
- `fastpath`: `manager.connection()`, on the ledger's records without a SQLAlchemy checkout.
- `units`: units of work on sessions.
- `pool`: `SQLAlchemyPool` itself (lifecycle, maintenance, gauges), composing the above.

This module re-exports the public names the single module `backends/sqlalchemy.py` had (those
imported from `connman.backends.sqlalchemy` elsewhere among them).
"""

from .ledger import LedgerPool, Lifetime
from .options import engine_options, session_options
from .pool import SQLAlchemyPool
from .probes import ALIVE_BYPASS_S
from .state import UnitHook

__all__ = ["ALIVE_BYPASS_S", "LedgerPool", "Lifetime", "SQLAlchemyPool", "UnitHook",
           "engine_options", "session_options"]
