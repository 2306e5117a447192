"""`ConnectionManager`: named pools under one lifespan, sessions by name, stats and events."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import ValidationError

from ._pool import Pool, not_open_message
from ._replicas import ReplicaRouter
from .config import ConnmanSettings, PoolConfig, load_settings, settings_pools, validate_pools
from .errors import ConfigurationError, PoolNotOpen, PoolStartupError, UnknownPool, WrongEventLoop
from .stats import EventHub, PoolEvent

if TYPE_CHECKING:
    from .backends.mongo import MongoPool

__all__ = ["ConnectionManager", "ReplicaRouter", "SessionProvider"]

logger = logging.getLogger("connman")

Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]
PoolsMapping = Mapping[str, PoolConfig | Mapping[str, Any] | str]


def _make_pool(name: str, config: PoolConfig, hub: EventHub) -> Pool:
    from .backends import check_installed

    check_installed(name, config)
    if config.backend == "sqlalchemy":
        from .backends.sqlalchemy import SQLAlchemyPool

        return SQLAlchemyPool(name, config, hub)
    from .backends.mongo import MongoPool

    try:
        return MongoPool(name, config, hub)
    except ValueError as exc:
        raise ConfigurationError(f"pool {name!r}: {exc}", pool=name, field="database") from None


@asynccontextmanager
async def _on_database(opener: Callable[[], AbstractAsyncContextManager[Any]],
                       database: str) -> AsyncIterator[Any]:
    """A Mongo unit of work on another database of the pool's client (`session(database=)`)."""
    async with opener() as unit:
        unit._retarget(database)
        yield unit


class SessionProvider:
    """`manager.session(name)`: a FastAPI dependency and an `async with` context in one.

    As a dependency (`Depends(manager.session("main"))`) its unit of work ends before the response
    is sent, so a failed commit is a 5xx; an exhausted pool answers 503 with `Retry-After`.
    """

    def __init__(self, name: str, open_unit: Callable[[], AbstractAsyncContextManager[Any]],
                 scope: Literal["function", "request"] = "function") -> None:
        self.name = name
        self.scope = scope
        self._open_unit = open_unit
        self._stack: contextvars.ContextVar[tuple[AbstractAsyncContextManager[Any], ...]] = (
            contextvars.ContextVar(f"connman_session_{name}", default=()))
        self._fastapi_dependency: Callable[..., AsyncIterator[Any]] | None = None
        # Every unit entered and not yet exited, whatever the context: the exit of an `async with`
        # may run in another context than its entry (an async-generator fixture under
        # pytest-asyncio < 1.0 runs its setup and teardown in two tasks).
        self._entered: list[AbstractAsyncContextManager[Any]] = []

    # -- async with manager.session("main") as db:
    async def __aenter__(self) -> Any:
        cm = self._open_unit()
        unit = await cm.__aenter__()
        self._stack.set((*self._stack.get(), cm))
        self._entered.append(cm)
        return unit

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        stack = self._stack.get()
        if stack:
            cm = stack[-1]
            self._stack.set(stack[:-1])
        else:  # exited in another context than it was entered in: the latest unit entered
            cm = self._entered[-1]
        for i in range(len(self._entered) - 1, -1, -1):
            if self._entered[i] is cm:
                del self._entered[i]
                break
        return await cm.__aexit__(*exc_info)

    # -- Depends(manager.session("main"))
    @property
    def _dependency(self) -> Callable[..., AsyncIterator[Any]]:
        """The generator dependency FastAPI runs (`connman.fastapi.session_dependency`), made
        once per provider so FastAPI's per-request dependency cache sees one callable."""
        if self._fastapi_dependency is None:
            from .fastapi import session_dependency

            self._fastapi_dependency = session_dependency(self)
        return self._fastapi_dependency

    @property
    def __signature__(self) -> inspect.Signature:
        """What FastAPI reads: one parameter fed by a function-scoped generator dependency."""
        from fastapi import Depends

        param = inspect.Parameter("unit", inspect.Parameter.KEYWORD_ONLY, annotation=Any,
                                  default=Depends(self._dependency, scope=self.scope))
        return inspect.Signature([param])

    async def __call__(self, *, unit: Any = None) -> Any:
        """Return the unit of work FastAPI built from the function-scoped dependency."""
        return unit

    def __repr__(self) -> str:
        scope = "" if self.scope == "function" else f" scope={self.scope!r}"
        return f"<SessionProvider {self.name!r}{scope}>"


class ConnectionManager:
    """Several named pools (SQL and Mongo) opened and closed together, used by name."""

    def __init__(self, pools: PoolsMapping | Callable[[], PoolsMapping], *,
                 workers: int = 1, replicas: int = 1) -> None:
        """Pools by name: each a `PoolConfig`, a mapping of its fields or a URL.

        `pools` may also be a function returning that mapping, called once by `open()` (the
        lifespan): the app builds its pools from its own settings object, and importing the app
        needs no database settings. Until then the pools do not exist: `session(name)` still
        returns its provider; `pool(name)` raises `PoolNotOpen`.
        Raises `ConfigurationError` (naming pool and field) for an invalid mapping.
        """
        self.hub = EventHub()
        self.workers = workers
        self.replicas = replicas
        self._pools: dict[str, Pool] = {}
        self._routers: dict[str, ReplicaRouter] = {}
        self._providers: dict[tuple[str, bool, str, str | None], SessionProvider] = {}
        # on_connect hooks registered before the pools exist (pools read at open()).
        self._pending_hooks: list[tuple[str, Callable[[Any, Any], None]]] = []
        self._source: Callable[[], PoolsMapping] | None = None
        self._missing_hint = "the function given to ConnectionManager returned no pools"
        if callable(pools) and not isinstance(pools, Mapping):
            self._source = pools
        else:
            self._build(pools)

    def _build(self, pools: PoolsMapping) -> None:
        configs = validate_pools(pools)
        built: dict[str, Pool] = {}
        routers: dict[str, ReplicaRouter] = {}
        for name, cfg in configs.items():
            built[name] = _make_pool(name, cfg, self.hub)
            if cfg.replicas:
                readers = [_make_pool(f"{name}.replica{i + 1}", rc, self.hub)
                           for i, rc in enumerate(cfg.replica_configs())]
                built.update((p.name, p) for p in readers)
                routers[name] = ReplicaRouter(built[name], readers)
        self._pools, self._routers = built, routers

    def requested_pools(self) -> set[str]:
        """The pool names the app has asked for so far (`session(name)`, `connection(name)`,
        `on_connect(name)`), lower-cased: what `open()` and `connman check --app` expect the
        settings to define. Read at any time; no I/O."""
        return ({key[0] for key in self._providers}
                | {name.lower() for name, _ in self._pending_hooks})

    @property
    def deferred(self) -> bool:
        """Whether the pools are still to be read (at `open()`) from the settings or a function."""
        return self._source is not None and not self._pools

    def _read_pools(self) -> None:
        """Build the pools from the deferred source; check the names sessions were asked for."""
        assert self._source is not None
        try:
            pools = self._source()
        except ValidationError as exc:  # the app's own settings object: never quote the input
            errors = exc.errors(include_url=False, include_input=False)
            details = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(settings)'}: "
                                f"{e['msg']}" for e in errors)
            raise ConfigurationError(f"the pools could not be read: {exc.title}: {details}",
                                     field="pools") from None
        wanted = sorted(self.requested_pools())
        if not pools:
            variables = ", ".join(f"CONNMAN_POOLS__{n.upper()}__URL" for n in wanted)
            hint = (f"set {variables}" if wanted and self._missing_hint.startswith("set")
                    else self._missing_hint)
            raise ConfigurationError(f"no pools configured: {hint}", field="pools")
        self._build(pools)
        unknown = [name for name in wanted if name not in self._pools]
        if unknown:
            known = ", ".join(repr(n) for n in self._pools)
            self._pools, self._routers = {}, {}
            raise UnknownPool(f"no pool named {unknown[0]!r}, which the app uses; known pools: "
                              f"{known}", pool=unknown[0])
        hooks, self._pending_hooks = self._pending_hooks, []
        for name, fn in hooks:
            self.on_connect(name, fn)
        for (name, readonly, _, database), provider in self._providers.items():
            provider.name = self._pools[name].name
            provider._open_unit = self._unit_opener(name, readonly, database)

    @classmethod
    def from_settings(cls, settings: ConnmanSettings | None = None, *,
                      env_file: str | Path | None = ".env",
                      config_file: str | Path | None = None) -> ConnectionManager:
        """Build from `CONNMAN_POOLS__<NAME>__<FIELD>` variables, a `.env` and/or a config file.

        With no pool settings present yet (an app imported by a test, an Alembic `env.py`, a CLI)
        or with a wrong one, this does not raise: the settings are read again at `open()`, which
        raises `ConfigurationError` naming the variable still missing (`CONNMAN_POOLS__MAIN__URL`)
        or the pool, the field and the variable (or file) of the wrong value.
        """
        if settings is not None:
            return cls(settings.pools, workers=settings.workers, replicas=settings.replicas)
        files = {"env_file": env_file, "config_file": config_file}
        try:
            settings = load_settings(**files)
            if settings.pools:
                return cls(settings_pools(settings, **files), workers=settings.workers,
                           replicas=settings.replicas)
        except ConfigurationError:
            # A wrong setting is reported by open() (the lifespan), in one line naming the pool,
            # the field and its variable, not at import inside the importer's traceback.
            settings = None

        def read() -> PoolsMapping:
            late = load_settings(**files)
            manager.workers, manager.replicas = late.workers, late.replicas
            return settings_pools(late, **files) if late.pools else {}

        manager = cls(read, workers=settings.workers if settings else 1,
                      replicas=settings.replicas if settings else 1)
        manager._missing_hint = "set CONNMAN_POOLS__<NAME>__URL"
        return manager

    # ------------------------------------------------------------------ lookup
    @property
    def names(self) -> tuple[str, ...]:
        """The pool names, in configuration order."""
        return tuple(self._pools)

    def pool(self, name: str) -> Pool:
        """The pool called `name` (any case); `UnknownPool` lists the known names.

        On a manager whose pools are read at `open()`, raises `PoolNotOpen` until then.
        """
        try:
            return self._pools[name]
        except KeyError:
            pool = self._pools.get(name.lower()) if isinstance(name, str) else None
            if pool is not None:
                return pool
            if self.deferred:
                raise PoolNotOpen(not_open_message(str(name)), pool=str(name)) from None
            known = ", ".join(repr(n) for n in self._pools)
            raise UnknownPool(f"no pool named {name!r}; known pools: {known}", pool=str(name)) from None

    def mongo_pool(self, name: str) -> MongoPool:
        """Pool `name`, typed as a Mongo pool (`.database`, `.database_name`, `.native()`).

        Raises `TypeError` for a SQL pool, and as `pool(name)` for an unknown name.
        """
        pool = self.pool(name)
        if pool.backend != "mongo":
            raise TypeError(f"pool {pool.name!r} is a {pool.backend} pool, not a Mongo pool")
        return cast("MongoPool", pool)

    def session(self, name: str, *, readonly: bool = False,
                scope: Literal["function", "request"] = "function",
                database: str | None = None) -> SessionProvider:
        """A unit of work on pool `name`: `Depends(...)` in FastAPI, or `async with` anywhere.

        SQL: an `AsyncSession` (expire_on_commit=False), committed on success, rolled back on
        error, its connection always returned. Mongo: the database handle.
        `readonly=True` reads from the pool's replicas (round-robin, skipping one that is down,
        lagging beyond `max_replica_lag`, or, with `read_your_writes`, behind this request's last
        commit; the primary when none qualifies or none is configured).
        `scope` (FastAPI's `Depends(scope=...)`): `"function"` ends the unit of work when the
        handler returns, before the response is sent, so a failed commit is a 5xx;
        `"request"` keeps it open until the response has been sent, for a `StreamingResponse`
        body that reads through it; its commit then happens after the response.
        A session used after its unit of work ended raises `SessionEnded`.
        `database` (Mongo pools): the unit is that database of the pool's client instead of the
        configured one (a database per tenant), under the same gate and transaction.
        Raises `PoolTimeout` / `TooManyWaiters` when no connection frees in time, `PoolNotOpen`
        when the pools were never opened (the app's lifespan did not run).

        The provider is one object per name (in any case), `readonly`, `scope` and `database`:
        `app.dependency_overrides[manager.session("main")]` replaces it in every route that
        depends on it (docs/testing.md). On a manager whose pools are read at `open()`, an unknown
        `name` is reported by `open()`; otherwise by this call (`UnknownPool`).
        """
        if scope not in ("function", "request"):
            raise ValueError(f"scope must be 'function' or 'request', not {scope!r}")
        key = (name.lower() if isinstance(name, str) else name, readonly, scope, database)
        provider = self._providers.get(key)
        if provider is None:
            if self.deferred:
                opener = partial(self._not_open_yet, key[0])
                provider = self._providers[key] = SessionProvider(key[0], opener, scope)
            else:
                pool = self.pool(name)
                provider = SessionProvider(
                    pool.name, self._unit_opener(pool.name, readonly, database), scope)
                self._providers[key] = provider
        return provider

    def _unit_opener(self, name: str, readonly: bool, database: str | None = None
                     ) -> Callable[[], AbstractAsyncContextManager[Any]]:
        pool = self.pool(name)
        router = self._routers.get(pool.name)
        opener: Callable[[], AbstractAsyncContextManager[Any]]
        if router is None:
            opener = pool.session
        elif readonly:
            opener = router.session
        else:
            opener = router.write_session if router.mode != "off" else pool.session
        if database is None:
            return opener
        if pool.backend != "mongo" or not isinstance(database, str) or not database:
            raise ConfigurationError(f"pool {pool.name!r}: database= takes a database name, for "
                                     "a Mongo pool", pool=pool.name, field="database")
        return partial(_on_database, opener, database)

    def _not_open_yet(self, name: str) -> AbstractAsyncContextManager[Any]:
        raise PoolNotOpen(not_open_message(name), pool=name)

    def connection(self, name: str) -> AbstractAsyncContextManager[Any]:
        """The fast path: the driver's own connection (asyncpg, aiomysql, ...) from pool `name`.

        No ORM session, no implicit transaction; limits, stats and lifetimes still apply.
        """
        return self.pool(name).connection()

    def on_connect(self, name: str, fn: Callable[[Any, Any], None]) -> None:
        """Run `fn(dbapi_connection, connection_record)` on every new connection of SQL pool `name`.

        SQLAlchemy's pool `connect` event (session settings, SQLite pragmas, ...), registered before
        the pool opens so the warmed connections get it too. Call before `open()`/the lifespan.
        """
        if self.deferred:
            self._pending_hooks.append((name, fn))  # checked when open() reads the pools
            return
        pool = self.pool(name)
        hooks = getattr(pool, "connect_hooks", None)
        if hooks is None:
            raise TypeError(f"pool {name!r} is a {pool.backend} pool; on_connect is for SQL pools")
        if not pool.closed:
            raise RuntimeError(f"pool {name!r} is already open; register on_connect before")
        hooks.append(fn)

    def native(self, name: str) -> Any:
        """The driver object of pool `name`: an `AsyncEngine`, `AsyncMongoClient` or Motor client."""
        return self.pool(name).native()

    # ------------------------------------------------------------------ stats and events
    def stats(self, name: str | None = None) -> Any:
        """Stats of pool `name` (stable keys, integer ms), or of every pool by name."""
        if name is not None:
            return self.pool(name).stats()
        return {n: p.stats() for n, p in self._pools.items()}

    def pop_stats(self, name: str) -> dict[str, int]:
        """Stats of pool `name`, then reset its counters."""
        return self.pool(name).pop_stats()

    def on(self, event: str, fn: Callable[[PoolEvent], None]) -> Callable[[], None]:
        """Call `fn(event)` for an event on any pool ("*" for all); returns an unsubscribe."""
        return self.hub.subscribe(event, fn)

    # ------------------------------------------------------------------ lifecycle
    async def open(self) -> None:
        """Open every pool at once; if a required one fails, close the others and raise naming it.

        A pool with `required=False` (replicas are) that cannot open does not stop startup: it is
        logged, its requests get `ServerUnavailable(kind="down")` (503 + `Retry-After`), and it
        keeps trying in the background (bounded, jittered backoff, at most
        `connman._healing.HEAL_TICK` seconds apart) until its server answers, then opens: no
        restart needed.
        Pools read at `open()` (`from_settings()` without pool settings at import, or a function
        given to the constructor) are read here first: `ConfigurationError` names what is
        missing, `UnknownPool` a name the app asked a session for that the settings lack.
        """
        if self.deferred:
            self._read_pools()
        pools = list(self._pools.values())
        results = await asyncio.gather(*(p.open() for p in pools), return_exceptions=True)
        failures = []
        for pool, result in zip(pools, results, strict=True):
            if not isinstance(result, BaseException):
                continue
            if pool.config.required or not isinstance(result, Exception):
                failures.append((pool, result))
            else:
                pool.go_down(result)
                logger.warning("connman: optional %s; serving without it (503 for its requests) "
                               "and trying again in the background", result)
        if not failures:
            for router in self._routers.values():
                router.start()
            self._warn_budget()
            return
        await asyncio.gather(*(p.close(0) for p in pools), return_exceptions=True)
        for _, r in failures:
            if isinstance(r, asyncio.CancelledError):
                raise r
        if len(failures) == 1 and isinstance(failures[0][1], (PoolStartupError, WrongEventLoop)):
            raise failures[0][1]
        message = "; ".join(str(r) for _, r in failures)
        raise PoolStartupError(message, pool=failures[0][0].name)

    def _warn_budget(self) -> None:
        """Warn when the pools, times workers and replicas, exceed a server's connection limit."""
        from .budget import compute_budget, server_key

        pools = [p for p in self._pools.values() if not p.closed]
        # Each pool read its server's limit while warming up: no round trip here.
        limits: dict[str, int | None] = {}
        for pool in pools:
            if pool.connection_limit is not None:
                limits[server_key(pool.config)] = pool.connection_limit
        configs = {p.name: p.config for p in pools}
        for line in compute_budget(configs, limits, workers=self.workers, replicas=self.replicas):
            if line.over:
                logger.warning(
                    "connman: pools %s may open %d connections to %s (%d per process × %d "
                    "workers × %d replicas) but the server accepts %s; run `connman check`",
                    ", ".join(line.pools), line.total, line.server, line.per_process,
                    line.workers, line.replicas, line.limit)

    async def close(self) -> None:
        """Drain every pool (each within its `drain_timeout`), then dispose them all."""
        await asyncio.gather(*(r.stop() for r in self._routers.values()))
        await asyncio.gather(*(p.close() for p in self._pools.values()), return_exceptions=True)

    async def __aenter__(self) -> ConnectionManager:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[dict[str, Any]]:
        """A FastAPI/Starlette lifespan: open all pools at startup, drain and close at shutdown.

        The app's `@app.on_event("startup")` handlers, which FastAPI skips when a lifespan is
        set, run once the pools are open, and its `"shutdown"` handlers before they close.
        """
        from ._app import run_event_handlers

        await self.open()
        try:
            async with run_event_handlers(app):
                yield {"connman": self}
        finally:
            await self.close()

    def wrap_lifespan(self, user_lifespan: Lifespan | None, *, app_first: bool = False) -> Lifespan:
        """A lifespan for `FastAPI(lifespan=...)` running the pools' and the app's own lifespan.

        By default the pools open first and the app's lifespan runs inside: its startup can use
        them, its shutdown runs before they close. With `app_first=True` the app's lifespan runs
        around the pools: its startup runs before they open (an app that creates its database or
        reads its settings there), its shutdown after they close. The state both yield is merged.
        """

        @asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
            if user_lifespan is None:
                async with self.lifespan(app) as state:
                    yield state
            elif app_first:
                async with user_lifespan(app) as user_state, self.lifespan(app) as state:
                    yield {**(user_state or {}), **state}
            else:
                async with self.lifespan(app) as state, user_lifespan(app) as user_state:
                    yield {**state, **(user_state or {})}

        return lifespan

    def health_router(self, *, prefix: str = "/health", include_stats: bool = True,
                      ping_timeout: float = 2.0, detail: bool = False,
                      dependencies: Sequence[Any] | None = None) -> Any:
        """A FastAPI router: per-pool status (`up`, `busy`, `down` since when and why); 503 if a
        required pool is down.

        Public by default (status per pool only); `detail=True` adds URLs (masked), driver
        errors, ping latency and stats, for an internal port or behind `dependencies` that
        authenticate. Each check takes at most `ping_timeout` seconds and never waits behind
        sessions: see `connman.fastapi.health_router`.
        """
        from .fastapi import health_router

        return health_router(self, prefix=prefix, include_stats=include_stats,
                             ping_timeout=ping_timeout, detail=detail, dependencies=dependencies)

    def __repr__(self) -> str:
        if self.deferred:
            return "<ConnectionManager [pools read at open()]>"
        inner = "; ".join(p.state() for p in self._pools.values())
        return f"<ConnectionManager [{inner}]>"
