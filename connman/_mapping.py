"""How each field of the one schema maps to each backend: data that the code and docs/mapping.md share.

`docs/mapping.md` is rendered from `MAPPING` by `render_markdown()` (run `python scripts/docs.py`,
which also renders docs/configuration.md from `connman.config`); a test keeps them equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["native", "emulated", "native + emulated", "n/a"]
BACKENDS = ("sqlalchemy", "mongo")
BACKEND_TITLES = {"sqlalchemy": "SQLAlchemy (asyncpg, psycopg, aiomysql, asyncmy, aiosqlite)",
                  "mongo": "PyMongo `AsyncMongoClient` / Motor"}


@dataclass(frozen=True)
class Entry:
    """How one schema field is honoured by one backend."""

    kind: Kind
    native: str
    note: str


MAPPING: dict[str, dict[str, Entry]] = {
    "size": {
        "sqlalchemy": Entry("native", "pool_size", "connections kept open; warmed at startup"),
        "mongo": Entry("native", "minPoolSize", "connections kept open; warmed at startup"),
    },
    "overflow": {
        "sqlalchemy": Entry("native + emulated", "pool_size = size + overflow, max_overflow = 0",
                            "connman's own pool class (`LedgerPool`) holds up to the maximum and "
                            "never closes a connection on return (SQLAlchemy's queue pool would "
                            "close one above `pool_size` the moment it comes back); connman "
                            "closes the surplus (see `overflow_idle`); the warm-up opens `size`"),
        "mongo": Entry("native", "maxPoolSize = size + overflow",
                       "PyMongo has one ceiling, so overflow is added to size"),
    },
    "overflow_idle": {
        "sqlalchemy": Entry("emulated", "pool_use_lifo = True",
                            "connman's maintenance closes idle connections above `size` unused "
                            "this long (capped by `idle`), oldest first, one after another; LIFO "
                            "reuse lets the surplus go idle under a light load"),
        "mongo": Entry("emulated", "-",
                       "PyMongo's `maxIdleTimeMS` closes every idle connection, `minPoolSize` "
                       "included: connman's maintenance closes the surplus above `size` unused "
                       "this long (capped by `idle`), oldest first, one after another"),
    },
    "timeout": {
        "sqlalchemy": Entry("emulated", "pool_timeout",
                            "connman's FIFO gate bounds the wait and raises `PoolTimeout`; its "
                            "pool (`LedgerPool`) admits checkouts only against a slot and never "
                            "waits (`pool_timeout` is set one second beyond, reported only); "
                            "SQLite: also sqlite3's lock `timeout`"),
        "mongo": Entry("native + emulated", "waitQueueTimeoutMS",
                       "connman's FIFO gate bounds the wait and raises `PoolTimeout`; every "
                       "operation of a unit runs under a slot (a `gather` or a cursor read after "
                       "the unit takes its own), so the driver's queue never makes one wait; "
                       "the native timeout stays as a backstop"),
    },
    "recycle": {
        "sqlalchemy": Entry("native + emulated", "pool_recycle",
                            "native max age; connman adds up to `recycle_jitter` early expiry "
                            "so a pool opened at once does not expire at once"),
        "mongo": Entry("emulated", "-",
                       "PyMongo has no max lifetime: connman marks a connection older than the "
                       "(jittered) limit stale when it comes back (and idle ones every "
                       "`recycle/20` s); PyMongo closes it and refills to `size`"),
    },
    "idle": {
        "sqlalchemy": Entry("emulated", "-",
                            "SQLAlchemy has no idle timeout: connman stamps check-in time and "
                            "replaces a connection idle too long at checkout"),
        "mongo": Entry("native", "maxIdleTimeMS", "closed on checkout or by the pool's reaper"),
    },
    "pre_ping": {
        "sqlalchemy": Entry("native + emulated", "pool_pre_ping",
                            "a round trip on checkout; a dead connection is replaced, not handed "
                            "out. SQLAlchemy's ping has no deadline: connman bounds it by "
                            "`connect_timeout`, and an unanswered one discards the connection "
                            "with `CheckoutTimeout` (503)"),
        "mongo": Entry("native", "(always on)",
                       "PyMongo checks a connection idle over 1 s for a closed socket before "
                       "reuse and retries reads/writes once; it cannot be turned off"),
    },
    "connect_timeout": {
        "sqlalchemy": Entry("native + emulated",
                            "connect_args: timeout (asyncpg) / connect_timeout (MySQL)",
                            "the MySQL drivers' option bounds only the TCP connect: connman bounds "
                            "their handshake too; psycopg's (libpq's) is whole seconds, at least "
                            "2, per host: connman bounds the whole connect instead; also the "
                            "pre-ping's and a close's deadline. "
                            "aiosqlite has no network connect (its `timeout` is the lock wait, "
                            "set from `timeout`); the startup deadline still applies"),
        "mongo": Entry("native", "connectTimeoutMS, serverSelectionTimeoutMS",
                       "both, so a missing server fails within the limit"),
    },
    "statement_timeout": {
        "sqlalchemy": Entry("native + emulated", "connect_args: command_timeout (asyncpg)",
                            "asyncpg: native, per call. psycopg, aiomysql, asyncmy, aiosqlite: "
                            "emulated, a timer on each execute, COMMIT and ROLLBACK kills the "
                            "connection (psycopg: after cancelling the statement on the server; "
                            "SQLite: interrupts the query). Either way `StatementTimeout`, the "
                            "connection invalidated, the unit of work rolled back"),
        "mongo": Entry("native", "timeoutMS",
                       "PyMongo's client-side operation timeout: each operation whole (server "
                       "selection, checkout, retries), its connection closed on expiry. "
                       "AsyncMongoClient before PyMongo 4.13.1: `socketTimeoutMS` (PYTHON-5406)"),
    },
    "database": {
        "sqlalchemy": Entry("n/a", "-", "the database is the URL's path"),
        "mongo": Entry("native", "client[database]",
                       "the handle a session yields; default: the URL's path"),
    },
    "driver": {
        "sqlalchemy": Entry("n/a", "-", "the driver is the URL scheme's `+driver` part"),
        "mongo": Entry("native", "AsyncMongoClient | AsyncIOMotorClient",
                       "`pymongo` (default) or `motor`"),
    },
    "echo": {
        "sqlalchemy": Entry("native", "echo", "SQL logged by SQLAlchemy's logger"),
        "mongo": Entry("emulated", "event_listeners", "commands logged by a connman command listener"),
    },
    "max_waiting": {
        "sqlalchemy": Entry("emulated", "-", "connman's gate refuses at once with `TooManyWaiters`"),
        "mongo": Entry("emulated", "-", "connman's gate refuses at once with `TooManyWaiters`"),
    },
    "leak_threshold": {
        "sqlalchemy": Entry("emulated", "-", "one warning with the checkout stack per leaked lease"),
        "mongo": Entry("emulated", "-", "one warning with the checkout stack per leaked lease"),
    },
    "transaction": {
        "sqlalchemy": Entry("n/a", "-",
                            "a SQL unit of work is always one transaction (see `commit`)"),
        "mongo": Entry("native + emulated", "start_session() + start_transaction()",
                       "each unit runs in one transaction on its own `ClientSession`, committed "
                       "before the response (an unknown commit result is retried within "
                       "`timeout`), aborted on any error; a transient error is "
                       "`TransactionConflict` (503 + `Retry-After`); needs a replica set"),
    },
    "reset_on_return": {
        "sqlalchemy": Entry("native + emulated", "pool_reset_on_return='rollback'",
                            "`rollback`: SQLAlchemy's reset; `full`: also asyncpg's "
                            "`Connection.reset()` + `DISCARD TEMP`, on psycopg what `DISCARD "
                            "ALL` clears but its prepared statements, MySQL's COM_RESET_CONNECTION, "
                            "SQLite's temporary tables dropped, then the `on_connect` hooks again; "
                            "on sessions and the fast path"),
        "mongo": Entry("n/a", "-", "a Mongo connection carries no session state an app sets"),
    },
    "credentials": {
        "sqlalchemy": Entry("emulated", "connect_args: async_creator_fn",
                            "the drivers take a fixed password (asyncpg's may be a callable; "
                            "the MySQL drivers' not): connman calls the provider inside each new "
                            "connection's async connect (after any `do_connect` listener) and "
                            "passes its `user`/`password` to the driver; asyncpg, psycopg, "
                            "aiomysql, asyncmy; SQLite: n/a"),
        "mongo": Entry("n/a", "-",
                       "refused: PyMongo reads a client's credentials once; MONGODB-OIDC takes "
                       "its own `authMechanismProperties.OIDC_CALLBACK` in `options`, called "
                       "whenever PyMongo needs a token"),
    },
    "options": {
        "sqlalchemy": Entry("native", "create_async_engine(**options)",
                            "passed through; a key that a schema field sets is an error"),
        "mongo": Entry("native", "AsyncMongoClient(**options)",
                       "passed through; a key that a schema field sets is an error"),
    },
}

# Native option names that a schema field already sets: passing them in `options` is a conflict.
CONFLICTS: dict[str, dict[str, str]] = {
    "sqlalchemy": {
        "pool_size": "size",
        "max_overflow": "overflow",
        "pool_use_lifo": "overflow_idle",
        "pool_timeout": "timeout",
        "pool_recycle": "recycle",
        "pool_pre_ping": "pre_ping",
        "echo": "echo",
    },
    "mongo": {
        "minpoolsize": "size",
        "maxpoolsize": "overflow",
        "waitqueuetimeoutms": "timeout",
        "maxidletimems": "idle",
        "connecttimeoutms": "connect_timeout",
        "serverselectiontimeoutms": "connect_timeout",
        "timeoutms": "statement_timeout",
        "sockettimeoutms": "statement_timeout",
    },
}


def render_markdown() -> str:
    """The mapping table as Markdown, one row per field, one column per backend."""
    lines = [
        "# How each setting maps to each driver",
        "",
        "Generated from `connman/_mapping.py` (`python scripts/docs.py`); a test keeps this file "
        "and the code equal.",
        "**native**: the driver's own option does it. **emulated**: the driver has no such option "
        "and connman implements the behaviour. **n/a**: does not apply, with the reason.",
        "",
        "| field | " + " | ".join(BACKEND_TITLES[b] for b in BACKENDS) + " |",
        "| --- | " + " | ".join("---" for _ in BACKENDS) + " |",
    ]
    for field, per_backend in MAPPING.items():
        cells = []
        for backend in BACKENDS:
            e = per_backend[backend]
            native = f" `{e.native}`" if e.native not in ("-", "") else ""
            cells.append(f"**{e.kind}**{native}: {e.note}")
        lines.append(f"| `{field}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
