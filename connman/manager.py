"""`ConnectionManager`: named pools under one lifespan, sessions by name, stats and events."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from ._pool import Pool
from .config import ConnmanSettings, PoolConfig, load_settings, validate_pools
from .errors import ConfigurationError, PoolStartupError, UnknownPool
from .stats import EventHub, PoolEvent

__all__ = ["ConnectionManager", "SessionProvider"]

Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


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


class SessionProvider:
    """`manager.session(name)`: a FastAPI dependency and an `async with` context in one.

    As a dependency (`Depends(manager.session("main"))`) its unit of work ends before the response
    is sent, so a failed commit is a 5xx; an exhausted pool answers 503 with `Retry-After`.
    """

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._stack: contextvars.ContextVar[tuple[AbstractAsyncContextManager[Any], ...]] = (
            contextvars.ContextVar(f"connman_session_{pool.name}", default=()))

    # -- async with manager.session("main") as db:
    async def __aenter__(self) -> Any:
        cm = self.pool.session()
        unit = await cm.__aenter__()
        self._stack.set((*self._stack.get(), cm))
        return unit

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        stack = self._stack.get()
        self._stack.set(stack[:-1])
        return await stack[-1].__aexit__(*exc_info)

    # -- Depends(manager.session("main"))
    async def _dependency(self) -> AsyncIterator[Any]:
        from .fastapi import unavailable_from

        try:
            async with self.pool.session() as unit:
                yield unit
        except Exception as exc:
            http = unavailable_from(exc)
            if http is None:
                raise
            raise http from exc

    @property
    def __signature__(self) -> inspect.Signature:
        """What FastAPI reads: one parameter fed by a function-scoped generator dependency."""
        from fastapi import Depends

        param = inspect.Parameter("unit", inspect.Parameter.KEYWORD_ONLY, annotation=Any,
                                  default=Depends(self._dependency, scope="function"))
        return inspect.Signature([param])

    async def __call__(self, *, unit: Any = None) -> Any:
        """Return the unit of work FastAPI built from the function-scoped dependency."""
        return unit

    def __repr__(self) -> str:
        return f"<SessionProvider {self.pool.name!r}>"


class ConnectionManager:
    """Several named pools (SQL and Mongo) opened and closed together, used by name."""

    def __init__(self, pools: Mapping[str, PoolConfig | Mapping[str, Any] | str], *,
                 workers: int = 1, replicas: int = 1) -> None:
        configs = validate_pools(pools)
        self.hub = EventHub()
        self.workers = workers
        self.replicas = replicas
        self._pools: dict[str, Pool] = {n: _make_pool(n, c, self.hub) for n, c in configs.items()}
        self._providers: dict[str, SessionProvider] = {}
        self._open_lock: asyncio.Lock | None = None

    @classmethod
    def from_settings(cls, settings: ConnmanSettings | None = None, *,
                      env_file: str | Path | None = ".env",
                      config_file: str | Path | None = None) -> ConnectionManager:
        """Build from `CONNMAN_POOLS__<NAME>__<FIELD>` variables, a `.env` and/or a config file."""
        if settings is None:
            settings = load_settings(env_file=env_file, config_file=config_file)
        return cls(settings.pools, workers=settings.workers, replicas=settings.replicas)

    # ------------------------------------------------------------------ lookup
    @property
    def names(self) -> tuple[str, ...]:
        """The pool names, in configuration order."""
        return tuple(self._pools)

    def pool(self, name: str) -> Pool:
        """The pool called `name`; `UnknownPool` lists the known names."""
        try:
            return self._pools[name]
        except KeyError:
            pool = self._pools.get(name.lower()) if isinstance(name, str) else None
            if pool is not None:
                return pool
            known = ", ".join(repr(n) for n in self._pools)
            raise UnknownPool(f"no pool named {name!r}; known pools: {known}", pool=str(name)) from None

    def session(self, name: str) -> SessionProvider:
        """A unit of work on pool `name`: `Depends(...)` in FastAPI, or `async with` anywhere.

        SQL: an `AsyncSession` (expire_on_commit=False), committed on success, rolled back on
        error, its connection always returned. Mongo: the database handle.
        Raises `PoolTimeout` / `TooManyWaiters` when no connection frees in time.
        """
        provider = self._providers.get(name)
        if provider is None:
            provider = self._providers[name] = SessionProvider(self.pool(name))
        return provider

    def connection(self, name: str) -> AbstractAsyncContextManager[Any]:
        """The fast path: the driver's own connection (asyncpg, aiomysql, ...) from pool `name`.

        No ORM session, no implicit transaction; limits, stats and lifetimes still apply.
        """
        return self.pool(name).connection()

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
        """Open every pool at once; if one fails, close the others and raise naming it."""
        pools = list(self._pools.values())
        results = await asyncio.gather(*(p.open() for p in pools), return_exceptions=True)
        failures = [(p, r) for p, r in zip(pools, results, strict=True)
                    if isinstance(r, BaseException)]
        if not failures:
            return
        await asyncio.gather(*(p.close(0) for p in pools), return_exceptions=True)
        for _, r in failures:
            if isinstance(r, asyncio.CancelledError):
                raise r
        if len(failures) == 1 and isinstance(failures[0][1], PoolStartupError):
            raise failures[0][1]
        message = "; ".join(str(r) for _, r in failures)
        raise PoolStartupError(message, pool=failures[0][0].name)

    async def close(self) -> None:
        """Drain every pool (each within its `drain_timeout`), then dispose them all."""
        await asyncio.gather(*(p.close() for p in self._pools.values()), return_exceptions=True)

    async def __aenter__(self) -> ConnectionManager:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[dict[str, Any]]:
        """A FastAPI/Starlette lifespan: open all pools at startup, drain and close at shutdown."""
        await self.open()
        try:
            yield {"connman": self}
        finally:
            await self.close()

    def wrap_lifespan(self, user_lifespan: Lifespan | None) -> Lifespan:
        """A lifespan that opens the pools, runs the app's own lifespan inside, then closes them."""

        @asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
            async with self.lifespan(app) as state:
                if user_lifespan is None:
                    yield state
                    return
                async with user_lifespan(app) as user_state:
                    yield {**state, **(user_state or {})}

        return lifespan

    def health_router(self, *, prefix: str = "/health", include_stats: bool = True) -> Any:
        """A FastAPI router: per-pool status, ping latency and stats; 503 if a required pool is down."""
        from .fastapi import health_router

        return health_router(self, prefix=prefix, include_stats=include_stats)

    def __repr__(self) -> str:
        inner = "; ".join(p.state() for p in self._pools.values())
        return f"<ConnectionManager [{inner}]>"
