"""The one pool configuration schema (`PoolConfig`), its validators and its presets."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from ._mapping import CONFLICTS
from ._schemes import backend_of, backend_of_or_none, resolve_url
from ._url import SecretURL, url_path_database

# Presets fill the fields a pool does not set. Reasons are in docs/configuration.md.
PRESETS: dict[str, dict[str, Any]] = {
    # Few connections, short waits and leak warnings: problems show up on a laptop, not in prod.
    "development": {"size": 2, "overflow": 3, "timeout": 5.0, "recycle": 300.0, "idle": 60.0,
                    "pre_ping": True, "leak_threshold": 10.0},
    # HikariCP-like: steady pool, 30 min lifetime, 10 min idle, pre-ping after restarts; a
    # frozen server costs a request at most 30 s, the time front proxies give up on it anyway.
    "production": {"size": 10, "overflow": 10, "timeout": 10.0, "recycle": 1800.0, "idle": 600.0,
                   "pre_ping": True, "statement_timeout": 30.0},
    # Many short requests: bigger pool, fail fast and shed load rather than queue.
    "high_traffic": {"size": 20, "overflow": 20, "timeout": 2.0, "recycle": 1800.0, "idle": 300.0,
                     "pre_ping": True, "max_waiting": 200, "statement_timeout": 5.0},
}

class FieldError(ValueError):
    """A cross-field check failed; carries the field to blame, for the error message."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class PoolConfig(BaseModel):
    """One pool's settings, with the same meaning on every backend (see docs/mapping.md)."""

    # hide_input_in_errors: a ValidationError raised directly (PoolConfig(url=...)) must not
    # quote the URL it refused.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True,
                              use_attribute_docstrings=True, hide_input_in_errors=True)

    url: SecretURL
    """Database URL; its scheme picks the backend. A string, a `sqlalchemy.engine.URL`, a pydantic
    URL/DSN (`PostgresDsn`, `MongoDsn`) or a `SecretStr`; a password that is the mask `***` is
    refused. Masked in every repr, log and error. `postgres://` and `postgresql://` (no driver)
    mean psycopg if it is installed, else asyncpg; libpq's multi-host address
    (`user@h1:5432,h2:5432/db`) is read as `?host=h1:5432&host=h2:5432`."""
    preset: Literal["development", "production", "high_traffic"] | None = None
    """Fill unset fields from a preset; fields set explicitly win."""
    size: int = Field(5, ge=0, le=10_000)
    """Connections kept open and warmed at startup (SQLAlchemy's default, 5)."""
    overflow: int = Field(10, ge=0, le=10_000)
    """Extra connections opened under load above `size` (`size + overflow` is the hard maximum),
    kept while they are used and closed once idle for `overflow_idle`, one after another."""
    overflow_idle: float = Field(300.0, gt=0)
    """Seconds a connection above `size` may stay unused before it is closed, down to `size`
    (at most `idle`). 300 s, asyncpg's `max_inactive_connection_lifetime`: bursts minutes apart
    find their connections open, and a spike's surplus goes back to the server within minutes,
    sooner than HikariCP's `idleTimeout` and psycopg_pool's `max_idle` (10 min, which connman's
    `idle` already applies to every connection)."""
    timeout: float = Field(30.0, gt=0, le=3600)
    """Seconds a request waits for a connection before `PoolTimeout` (SQLAlchemy's 30 s)."""
    recycle: float | None = Field(1800.0, gt=0)
    """Max lifetime of a connection in seconds (HikariCP's 30 min); None keeps them forever."""
    recycle_jitter: float = Field(0.05, ge=0, lt=1)
    """Fraction of `recycle` by which each connection expires early, at random (psycopg's 5 %)."""
    idle: float | None = Field(600.0, gt=0)
    """Seconds unused after which a connection is closed instead of reused (HikariCP's 10 min)."""
    pre_ping: bool = True
    """Check a connection is alive before handing it out, so a restart costs no request; a ping
    unanswered within `connect_timeout` discards it with `CheckoutTimeout`."""
    connect_timeout: float = Field(10.0, gt=0, le=600)
    """Seconds to open one connection (handshake included) or to get a pre-ping's answer;
    startup fails within this, naming the pool."""
    database: str | None = None
    """Mongo: database a session yields (default: the URL's path). SQL: must be unset."""
    driver: Literal["pymongo", "motor"] | None = None
    """Mongo client library: `pymongo` (AsyncMongoClient, default) or `motor`."""
    echo: bool = False
    """Log every statement (SQL) or command (Mongo)."""
    max_waiting: int = Field(0, ge=0)
    """Refuse a request at once with `TooManyWaiters` when this many already wait; 0: no limit."""
    leak_threshold: float | None = Field(None, gt=0)
    """Warn once, with the checkout stack, when a connection is held longer than this (seconds)."""
    drain_timeout: float = Field(10.0, ge=0)
    """Seconds shutdown waits for checked-out connections before disposing the pool."""
    required: bool = True
    """Health turns 503 when this pool is down; an optional pool only reports."""
    retry_after: int | None = Field(None, ge=0)
    """`Retry-After` seconds on a 503 for this pool; default: `ceil(timeout)`, at least 1."""
    external_pooler: Literal["pgbouncer"] | None = None
    """Set to `pgbouncer` when a transaction-mode PgBouncer sits in front of PostgreSQL: no
    prepared statements are reused (asyncpg's and SQLAlchemy's caches off, psycopg's
    `prepare_threshold=None`)."""
    replicas: list[SecretURL] = Field(default_factory=list)
    """Read replica URLs (SQL): `session(name, readonly=True)` reads from them, round-robin."""
    read_your_writes: Literal["auto", "off", "request", "process"] = "auto"
    """With `replicas`: whether a `readonly=True` unit sees the commits made before it.
    `auto` (the default): `process` on PostgreSQL, `request` elsewhere — a read never misses a
    write this process committed, whatever the replica's lag, which is what an app that splits
    reads from writes assumes; `off` for plain round-robin (reads may lag: then bound them with
    `max_replica_lag`). Without `replicas` it costs nothing.
    `request` (`true`): after a unit on the primary commits, later readonly units of the same
    request (asyncio context: the request's task under an ASGI server) read from the primary;
    costs no round trip, the primary takes those reads. `process` (PostgreSQL): every readonly
    unit that starts after a commit of this process reads from a replica that has replayed it
    (WAL positions), else the primary; costs one round trip on the primary after each committed
    unit that ran a statement (`pg_current_wal_insert_lsn()`, on a free connection; none free:
    the reads use the primary until a later commit's position is known) and one on the replica
    for a read whose replica was not yet seen that far (`pg_last_wal_replay_lsn()`); under
    steady writes most reads go to the primary. Another process's writes are not covered. See
    docs/outages.md."""
    max_replica_lag: float | None = Field(None, gt=0)
    """With `replicas` (PostgreSQL): seconds a replica may be behind before it leaves the read
    rotation (until it catches up). Checked in the background about once a second on a free
    connection of each replica (`now() - pg_last_xact_replay_timestamp()` while it has WAL to
    replay), never on a request's path; None: no bound. Not applied on MariaDB/MySQL."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Raw driver keyword arguments passed through; a key a field above sets is an error."""
    reset_on_return: Literal["rollback", "full"] = "rollback"
    """What a connection is cleared of when a unit of work gives it back (SQL): `rollback` (the
    open transaction, SQLAlchemy's reset) or `full` (also session settings, advisory locks, LISTEN,
    temporary tables and prepared state, as asyncpg's own pool does). See docs/semantics.md."""
    statement_timeout: float | None = Field(None, gt=0)
    """Seconds one operation (a statement, COMMIT, ROLLBACK; Mongo: a whole operation) may wait for
    the server's answer before `StatementTimeout`; its connection is discarded and the unit of
    work rolled back. None: no limit (every driver's). See docs/semantics.md."""
    session_class: Any = None
    """SQL: the session class sessions are made of (a class or a dotted path such as
    `sqlmodel.ext.asyncio.session.AsyncSession`); default SQLAlchemy's `AsyncSession`. It must
    subclass SQLAlchemy's `AsyncSession`."""
    session_options: dict[str, Any] = Field(default_factory=dict)
    """SQL: keyword arguments for `async_sessionmaker` (`autoflush`, `expire_on_commit`, `info`,
    `join_transaction_mode`, ...); connman's default is `expire_on_commit=False`. `bind` and
    `binds` are refused (sessions use this pool's engine, so its limits hold), as is `class_`
    (use `session_class`)."""
    credentials: Any = None
    """SQL (asyncpg, psycopg, aiomysql, asyncmy): where each new connection gets its password, for
    passwords and tokens that rotate (RDS IAM, Entra ID, Vault). A callable or a dotted path
    (`myapp.db:password`), sync or async, returning the password (`str` or `SecretStr`) or a
    `(user, password)` pair; called with a `connman.ConnectTarget` (pool, host, port, database,
    URL user) if it takes one argument, else with none. Called once for every new connection
    (warm-up, overflow, a replacement after `recycle` or a lost connection; replicas with their
    own target), inside the driver's connect: an async provider is awaited there, bounded by
    `connect_timeout`; a sync one runs on the event loop and must not block. Connections already
    open keep working; `recycle` bounds how long one outlives its credential. Unset: the URL's
    user and password. A provider that fails fails that connect with
    `ServerUnavailable(kind="credentials")` (503 + `Retry-After`; `PoolStartupError` at startup),
    naming the pool and the provider, never its message. Shown by name only, never called for
    display. Mongo: refused (see docs/semantics.md, "Credentials that rotate")."""
    commit: Literal["auto", "manual"] = "auto"
    """`auto`: a unit of work commits when the handler succeeds; `manual`: the app commits
    (`await session.commit()` in the view), and what it left uncommitted when the unit ends is
    rolled back. Either way the connection always goes back. Mongo: `manual` needs `transaction`."""
    transaction: bool = False
    """Mongo: run each unit of work in one multi-document transaction, committed before the
    response and aborted on any error (needs a replica set or sharded cluster)."""

    if TYPE_CHECKING:
        # What a type checker shows users: keyword fields, each validated at run time. Without
        # this, mypy derives a signature that refuses a plain string `url` (the field is a
        # SecretURL) and, as pydantic's `Field(5, ...)` default is positional, calls every
        # field required.
        def __init__(self, **fields: Any) -> None: ...

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("preset") is not None:
            preset = PRESETS.get(str(data["preset"]))
            if preset is not None:
                return {**preset, **data}
        return data

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: SecretURL) -> SecretURL:
        url = resolve_url(url)
        backend_of(url.scheme)
        return url

    @field_validator("size", mode="before")
    @classmethod
    def _size_minimum(cls, value: Any, info: ValidationInfo) -> Any:
        # Before pydantic's own bound (ge=0), so one message gives the minimum that holds for
        # this pool's backend: SQLAlchemy reads pool_size=0 as "no limit".
        url = info.data.get("url")
        sql = isinstance(url, SecretURL) and backend_of_or_none(url.scheme) == "sqlalchemy"
        number: int | None = None
        with contextlib.suppress(TypeError, ValueError):
            number = int(value)
        if number is not None and number < (1 if sql else 0):
            raise ValueError("must be at least 1 on a SQL pool (SQLAlchemy reads pool_size=0 as "
                             "'no limit')" if sql else "must be at least 0")
        return value

    @field_validator("replicas")
    @classmethod
    def _known_replica_schemes(cls, urls: list[SecretURL]) -> list[SecretURL]:
        return [resolve_url(url) for url in urls]

    @field_validator("read_your_writes", mode="before")
    @classmethod
    def _read_your_writes(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return "request" if value else "off"
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return "request" if value.lower() == "true" else "off"
        return value

    @field_validator("session_class", mode="before")
    @classmethod
    def _session_class(cls, value: Any) -> Any:
        if value is None or isinstance(value, type):
            return value
        if isinstance(value, str):
            return _import_class(value.strip())
        raise ValueError(f"expected a class or a dotted path, not {type(value).__name__}")

    @field_validator("credentials", mode="before")
    @classmethod
    def _credentials(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            value = _import_object(value.strip())
            if not callable(value):
                raise ValueError("the dotted path does not name a callable")
            return value
        if callable(value) and not isinstance(value, type):
            return value
        raise ValueError(f"expected a callable or a dotted path, not {type(value).__name__} "
                         "(a password that rotates comes from a function; a fixed one goes in "
                         "the URL)")

    @field_serializer("credentials")
    def _credentials_name(self, value: Any) -> str | None:
        return None if value is None else _callable_name(value)

    @field_serializer("session_class")
    def _session_class_path(self, value: Any) -> str | None:
        return None if value is None else f"{value.__module__}.{value.__qualname__}"

    @field_validator("session_options")
    @classmethod
    def _session_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        for key in options:
            reason = _OWNED_SESSION_OPTIONS.get(key)
            if reason is not None:
                raise ValueError(f"{key!r} cannot be set: {reason}")
        return options

    @model_validator(mode="after")
    def _check_backend(self) -> PoolConfig:
        backend, _, _ = backend_of(self.url.scheme)
        if self.size + self.overflow < 1:
            raise FieldError("size", "size + overflow must be at least 1")
        if backend == "sqlalchemy":
            if self.driver is not None:
                raise FieldError("driver", "'driver' applies to mongodb:// pools only")
            if self.database is not None:
                raise FieldError("database", "'database' applies to mongodb:// pools only; "
                                 "for SQL put the database in the URL path")
            if self.credentials is not None and backend_of(self.url.scheme)[1] == "aiosqlite":
                raise FieldError("credentials", "'credentials' does not apply to SQLite, "
                                 "which has no password")
        else:
            if self.credentials is not None:
                raise FieldError("credentials", _MONGO_CREDENTIALS)
            for sql_only in ("session_class", "session_options"):
                if getattr(self, sql_only):
                    raise FieldError(sql_only, f"{sql_only!r} applies to SQL pools only")
            if self.commit == "manual" and not self.transaction:
                raise FieldError("commit", "commit='manual' needs transaction=True on a Mongo "
                                 "pool: without a transaction there is nothing to commit")
            if self.external_pooler is not None:
                raise FieldError("external_pooler",
                                 "'external_pooler' applies to PostgreSQL pools only")
            if not (self.database or url_path_database(self.url.get_secret_value())):
                raise FieldError("database",
                                 "no database: set 'database' or put it in the URL path")
        if self.external_pooler is not None and self.reset_on_return == "full":
            raise FieldError("reset_on_return", "'full' cannot work behind a transaction-mode "
                             f"pooler (external_pooler={self.external_pooler!r}): the COMMIT "
                             "hands the server connection back to the pooler before any reset "
                             "runs, so the reset lands on another client's session; keep "
                             "'rollback' and use transaction-scoped state (SET LOCAL, "
                             "pg_advisory_xact_lock, ON COMMIT DROP)")
        if backend != "sqlalchemy" and (self.read_your_writes not in ("auto", "off")
                                        or self.max_replica_lag is not None):
            what = ("read_your_writes" if self.read_your_writes not in ("auto", "off")
                    else "max_replica_lag")
            raise FieldError(what, f"{what!r} applies to SQL pools with replicas; Mongo "
                             "reads follow the URL's readPreference (causal sessions)")
        if self.read_your_writes == "process" and self.replicas and self.url.scheme.startswith(
                "mysql"):
            raise FieldError("read_your_writes", "'process' needs replication positions, which "
                             "connman reads on PostgreSQL only; use 'request' (the reads after a "
                             "write in a request go to the primary)")
        for replica in self.replicas:
            if backend != "sqlalchemy":
                raise FieldError("replicas", "'replicas' applies to SQL pools; for Mongo use a "
                                 "replica set URL and readPreference")
            if replica.scheme != self.url.scheme:
                raise FieldError("replicas", f"replica scheme {replica.scheme!r} differs from "
                                 f"the pool's {self.url.scheme!r}")
        conflicts = CONFLICTS[backend]
        for key in self.options:
            field = conflicts.get(key if backend == "sqlalchemy" else key.lower())
            if field is not None:
                raise FieldError("options", f"options[{key!r}] conflicts with the field "
                                 f"{field!r}; set {field!r} instead")
        return self

    @property
    def backend(self) -> str:
        """`sqlalchemy` or `mongo`, from the URL scheme."""
        return backend_of(self.url.scheme)[0]

    @property
    def driver_name(self) -> str:
        """The driver library: asyncpg, psycopg, aiomysql, asyncmy, aiosqlite, pymongo or motor."""
        _, driver, _ = backend_of(self.url.scheme)
        return self.driver or driver

    @property
    def extra(self) -> str:
        """The pip extra that installs this pool's driver."""
        if self.driver == "motor":
            return "motor"
        return backend_of(self.url.scheme)[2]

    @property
    def max_size(self) -> int:
        """The most connections this pool opens: `size + overflow`."""
        return self.size + self.overflow

    @property
    def shrink_after(self) -> float:
        """Seconds unused after which a connection above `size` is closed: `overflow_idle`,
        capped by `idle`."""
        return self.overflow_idle if self.idle is None else min(self.overflow_idle, self.idle)

    @property
    def retry_after_s(self) -> int:
        """Seconds a client is told to wait after a 503 from this pool."""
        if self.retry_after is not None:
            return self.retry_after
        return max(1, math.ceil(min(self.timeout, 60)))

    def replica_configs(self) -> list[PoolConfig]:
        """One config per replica: this pool's settings with the replica's URL, not required."""
        return [self.model_copy(update={"url": url, "replicas": [], "required": False})
                for url in self.replicas]

    def __repr_args__(self) -> Any:
        for key, value in super().__repr_args__():
            if key == "options":
                yield key, _masked_options(value)
            elif key == "credentials" and value is not None:
                yield key, _callable_name(value)
            else:
                yield key, value


# sessionmaker options connman sets itself, and why a pool's config cannot.
_OWNED_SESSION_OPTIONS = {
    "bind": "sessions are bound to this pool's engine, whose connections all pass its gate; a "
            "session bound to another engine would take connections past the pool's limits, "
            "stats and drain",
    "binds": "sessions are bound to this pool's engine, whose connections all pass its gate; "
             "per-table binds to other engines would take connections past it",
    "class_": "set 'session_class' instead",
}


_MONGO_CREDENTIALS = (
    "'credentials' applies to SQL pools: PyMongo reads a client's credentials once, when the "
    "client is made. For MONGODB-OIDC (workload identity) give PyMongo its own callback in "
    "'options' (authMechanism: MONGODB-OIDC, authMechanismProperties: {OIDC_CALLBACK: ...}), "
    "which it calls whenever it needs a token; for a password that rotates, reopen the pool "
    "(see docs/semantics.md, 'Credentials that rotate')")


def _import_object(path: str) -> Any:
    """What a dotted path (`pkg.module.name` or `pkg.module:name`) names."""
    import importlib

    module_name, sep, attr = path.replace(":", ".").rpartition(".")
    if not sep or not module_name or not attr:
        raise ValueError(f"{path!r} is not a dotted path such as 'package.module.name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {path!r}: {exc}") from None
    found = getattr(module, attr, None)
    if found is None:
        raise ValueError(f"module {module_name!r} has no {attr!r}")
    return found


def _import_class(path: str) -> type[Any]:
    """The class a dotted path (`pkg.module.Class` or `pkg.module:Class`) names."""
    found = _import_object(path)
    if not isinstance(found, type):
        raise ValueError(f"{path!r} is not a class")
    return found


def _callable_name(fn: Any) -> str:
    """A callable's dotted name, for reprs and dumps: never its bound arguments."""
    from ._credentials import provider_name

    return provider_name(fn)


def _masked_options(options: Mapping[Any, Any]) -> dict[Any, Any]:
    """Driver options with the values of secret-looking keys replaced by ***."""
    return {k: ("***" if _looks_secret(str(k)) else v) for k, v in options.items()}


def _looks_secret(key: str) -> bool:
    return any(word in key.lower() for word in ("pass", "secret", "token", "key", "credential"))
