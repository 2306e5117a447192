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

Reaches into SQLAlchemy that remain (each pinned on both dependency sets by tests/test_drivers.py
or exercised by the suite's behaviour tests; no silent `getattr` default among them):

- `ledger.LedgerPool`: the `Pool` subclass contract (`_do_get`, `_do_return_conn`,
  `_create_connection`, and `recreate()` passing on `_creator`, `_recycle`, `_orig_logging_name`,
  `_reset_on_return`, `_pre_ping`, `dispatch`, `_dialect`, as `QueuePool.recreate` does), and
  `Pool._invalidate_time`, which SQLAlchemy's own records read to reconnect after a disconnect:
  the extension point SQLAlchemy offers for pools, whose hooks are underscored
  (`test_sqlalchemy_pool_subclass_contract_holds`).
- `units._changing` / `units._session_connections`: a session's `_transaction`, its
  `_next_state` and `_connections`, to end a session `close()` could not (another task inside it,
  a close abandoned past its deadline); no public API says which connections a session holds
  mid-state-change (`test_sqlalchemy_session_and_fairy_reaches_hold`).
- `state._reclaim_stranded` (SQLAlchemy < 2.0.58 only): a fairy's `_connection_record` and
  `_counter`, the only trace of a checkin a cancellation cut short (same test).
- Dialect methods wrapped on the engine's own dialect object (8): `do_execute`,
  `do_execute_no_params`, `do_executemany` (two tasks on one connection: `ConcurrentUse`),
  `do_ping` (the bypass window, a deadline), `do_close` (a deadline), `do_commit`/`do_rollback`
  (the emulated `statement_timeout`), psycopg's `do_terminate` (without the loop). SQLAlchemy
  has events around executes but none that can bound or refuse the driver call itself.

Reaches into drivers here (the others are in `backends/drivers/`), pinned by
`test_connect_reaches_hold` in tests/test_drivers.py: `connect._aiomysql_connect` awaits
`aiomysql.Connection._connect()` (the handshake of a `Connection` built from its public class, so
a connect cut short can be closed: `aiomysql.connect` drops the half-open socket);
`connect._aiosqlite_connect` marks aiosqlite's worker thread daemon as SQLAlchemy does
(`Connection._thread` from aiosqlite 0.22; before, the connection is the thread).

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
