"""Per-test isolation of every pool of a manager, and pointing an imported app's pools elsewhere.

The parts `connman.testing.plugin` is made of, for apps that wire their own fixtures:

- `point(manager, name, url)` redirects a pool (still closed) to another server after the app
  module built its manager at import.
- `Isolation(manager)` joins every SQL pool's units of work to one outer transaction that is rolled
  back at the end (`connman.testing.binding.TestBinding`), and gives every Mongo pool a fresh database that is
  dropped at the end. The app's code, connman's gate, timeouts and stats run unchanged.
- `isolated(manager)` is the same as an async context manager that also opens the pools if they
  are closed (and closes what it opened).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from ..config import PoolConfig

if TYPE_CHECKING:
    from ..manager import ConnectionManager
    from .binding import TestBinding

__all__ = ["Isolation", "SessionRuntime", "app_client", "isolated", "mark_app", "open_pools",
           "point", "run_in_thread", "session_client"]

T = TypeVar("T")


def run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion in a fresh event loop on a thread of its own; return its result.

    For setup work from synchronous fixtures, which may be called while another loop runs.
    """
    out: list[Any] = []

    def target() -> None:
        try:
            out.append((True, asyncio.run(coro)))
        except BaseException as exc:
            out.append((False, exc))

    thread = threading.Thread(target=target, name="connman-testing-setup")
    thread.start()
    thread.join()
    ok, value = out[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def point(manager: ConnectionManager, name: str, url: str | None = None, **fields: Any) -> None:
    """Redirect pool `name` of an already built manager (to a test server): `url` and `fields`
    replace the configured ones; every other field is kept.

    The pool must be closed (call this before the lifespan opens it). Sessions already handed to
    FastAPI (`Depends(manager.session(name))`, made at import) follow. A pool with `replicas` gets
    as many replicas, each pointing at the same new URL (so `readonly=True` reads still run through
    a replica pool). Raises `RuntimeError` when the pool is open and `ConfigurationError` for an
    invalid result.
    """
    # The one place that rebuilds a manager's pool after construction: it reaches into the
    # manager's registry (pools, replica routers, cached session providers).
    from ..manager import ReplicaRouter, _make_pool

    if getattr(manager, "deferred", False):
        _point_deferred(manager, name, url, fields)
        return
    old = manager.pool(name)
    key = old.name
    if not old.closed:
        raise RuntimeError(f"pool {key!r} is open; point it before the app's lifespan opens it")
    values: dict[str, Any] = {k: getattr(old.config, k) for k in old.config.model_fields_set}
    values.update(fields)
    if url is not None:
        values["url"] = url
        if old.config.replicas and "replicas" not in fields:
            values["replicas"] = [url] * len(old.config.replicas)
    from ..config import validate_pools

    config: PoolConfig = validate_pools({key: values})[key]
    pool = _make_pool(key, config, manager.hub)
    hooks = getattr(old, "connect_hooks", None)
    if hooks and hasattr(pool, "connect_hooks"):
        pool.connect_hooks.extend(hooks)
    pools: dict[str, Any] = manager._pools
    routers: dict[str, Any] = manager._routers
    for stale in [n for n in pools if n.startswith(f"{key}.replica")]:
        del pools[stale]
    pools[key] = pool
    routers.pop(key, None)
    if config.replicas:
        readers = [_make_pool(f"{key}.replica{i + 1}", rc, manager.hub)
                   for i, rc in enumerate(config.replica_configs())]
        pools.update((p.name, p) for p in readers)
        routers[key] = ReplicaRouter(pool, readers)
    for (pname, readonly, _scope, database), provider in manager._providers.items():
        if pname == key:
            provider._open_unit = manager._unit_opener(key, readonly, database)


def _fields_of(raw: Any) -> dict[str, Any]:
    if isinstance(raw, PoolConfig):
        return {k: getattr(raw, k) for k in raw.model_fields_set}
    if isinstance(raw, str):
        return {"url": raw}
    return dict(raw or {})


def _point_deferred(manager: ConnectionManager, name: str, url: str | None,
                    fields: dict[str, Any]) -> None:
    """Point a pool of a manager whose pools are read at `open()` (from_settings() imported
    without settings, or a function): the overrides are applied to what that read returns."""
    m: Any = manager  # the deferred-pools attributes of issue 12's manager
    overrides: dict[str, dict[str, Any]] | None = getattr(m, "_cm_test_overrides", None)
    if overrides is None:
        overrides = {}
        source = m._source

        def read() -> dict[str, Any]:
            assert overrides is not None
            pools = {str(k).lower(): _fields_of(v) for k, v in dict(source() or {}).items()}
            for key, change in overrides.items():
                merged = {**pools.get(key, {}), **change}
                if "url" in change and merged.get("replicas") and "replicas" not in change:
                    merged["replicas"] = [change["url"]] * len(merged["replicas"])
                pools[key] = merged
            return pools

        m._source = read
        m._cm_test_overrides = overrides
    change = dict(fields)
    if url is not None:
        change["url"] = url
    overrides[name.lower()] = change


def resolve(manager: ConnectionManager) -> None:
    """Build the pools of a manager that reads them at `open()` now (no I/O), so they can be
    isolated before the app's lifespan opens them. Nothing to do for any other manager."""
    m: Any = manager
    if getattr(m, "deferred", False):
        m._read_pools()


def _primary_of(manager: ConnectionManager, pool: Any) -> Any:
    for router in manager._routers.values():
        if pool in router.replicas:
            return router.primary
    return None


_mongo_clients: dict[str, Any] = {}
_mongo_lock = threading.Lock()


def _drop_mongo_database(url: str, database: str) -> None:
    """Drop `database` with PyMongo's synchronous client: works from any thread, in any loop setup."""
    from pymongo import MongoClient

    with _mongo_lock:
        client = _mongo_clients.get(url)
        if client is None:
            client = _mongo_clients[url] = MongoClient(url, serverSelectionTimeoutMS=10_000)
    client.drop_database(database)


def close_mongo_clients() -> None:
    """Close the synchronous clients used to drop per-test databases."""
    with _mongo_lock:
        clients = list(_mongo_clients.values())
        _mongo_clients.clear()
    for client in clients:
        client.close()


class Isolation:
    """One test's isolation of every pool of `manager` (see the module docstring).

    `start()` does no I/O, so it may run before the pools open and outside any event loop: each SQL
    pool's outer transaction begins at its first unit of work, in that unit's event loop. End with
    `await aclose()` from that loop, or `close()` from synchronous code once the loop is idle.
    """

    def __init__(self, manager: ConnectionManager, *, mongo_suffix: str | None = None) -> None:
        self.manager = manager
        self.bindings: dict[str, TestBinding] = {}
        """The SQL pools' test bindings, by pool name (replicas share their primary's)."""
        self.databases: dict[str, str] = {}
        """The Mongo pools' per-test database names, by pool name."""
        self._suffix = mongo_suffix or uuid.uuid4().hex[:12]
        self._started = False

    def start(self) -> Isolation:
        """Bind every SQL pool and give every Mongo pool its fresh database; returns self."""
        if self._started:
            raise RuntimeError("this isolation has already started")
        self._started = True
        manager = self.manager
        resolve(manager)  # pools read at open(): build them, or there would be nothing to bind
        try:
            pools: list[Any] = [manager.pool(n) for n in manager.names]
            for pool in pools:
                if pool.backend == "sqlalchemy" and _primary_of(manager, pool) is None:
                    from .binding import TestBinding

                    self.bindings[pool.name] = TestBinding(pool)
                    pool.bind(self.bindings[pool.name])
            for pool in pools:
                primary = _primary_of(manager, pool)
                if pool.backend == "sqlalchemy" and primary is not None:
                    self.bindings[pool.name] = pool.bind(self.bindings[primary.name])
                elif pool.backend == "mongo":
                    base = pool.database_name
                    fresh = f"{base[:40]}_t{self._suffix}"
                    pool.use_database(fresh)
                    self.databases[pool.name] = fresh
        except BaseException:
            self._release()
            raise
        return self

    def _release(self) -> list[tuple[str, str]]:
        drops = []
        for name in list(self.bindings):
            sql: Any = self.manager.pool(name)
            sql.unbind()
        self.bindings.clear()
        for name, database in self.databases.items():
            pool: Any = self.manager.pool(name)
            pool.use_database(None)
            drops.append((pool.config.url.get_secret_value(), database))
        self.databases.clear()
        return drops

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Units of work in the block are not isolated (the app's startup, when the plugin opens
        the pools once per session: what it writes stays for the session, as in production).
        Only before the first unit of work of the test (no outer transaction open)."""
        if self._active():
            raise RuntimeError("the test's transaction is open: cannot pause the isolation")
        pools: list[Any] = [self.manager.pool(n) for n in self.bindings]
        saved = [(p, p.binding) for p in pools]
        for p in pools:
            p.unbind()
        try:
            yield
        finally:
            for p, binding in saved:
                p._binding = None
                p.bind(binding)

    def _active(self) -> list[TestBinding]:
        seen: list[TestBinding] = []
        for b in self.bindings.values():
            if b.active and b not in seen:
                seen.append(b)
        return seen

    async def aclose(self) -> None:
        """Roll back every SQL pool's outer transaction (in this loop) and drop the Mongo databases."""
        errors: list[BaseException] = []
        for binding in self._active():
            try:
                await binding.rollback()
            except Exception as exc:
                errors.append(exc)
        for url, database in self._release():
            await asyncio.to_thread(_drop_mongo_database, url, database)
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Like `aclose()`, from synchronous code (a fixture's teardown).

        An outer transaction still open is rolled back in its own event loop, which must be idle
        (not running) and not closed; else `RuntimeError` says what to change.
        """
        errors: list[BaseException] = []
        for binding in self._active():
            loop = binding.loop
            assert loop is not None
            try:
                if loop.is_closed():
                    raise RuntimeError(
                        f"pool {binding.pool.name!r}: the event loop of its test transaction is "
                        "closed, so it cannot be rolled back; close the pools (the app's lifespan) "
                        "in the test's loop, e.g. with the connman_client fixture")
                if loop.is_running():
                    raise RuntimeError(
                        f"pool {binding.pool.name!r}: its test transaction's event loop is running; "
                        "use `await isolation.aclose()` from it")
                loop.run_until_complete(binding.rollback())
            except Exception as exc:
                errors.append(exc)
                binding.conn = None  # give up on it: unbinding must still happen
        for url, database in self._release():
            _drop_mongo_database(url, database)
        if errors:
            raise errors[0]


@contextlib.asynccontextmanager
async def isolated(manager: ConnectionManager, *, open: bool = True) -> AsyncIterator[Isolation]:
    """Isolate every pool of `manager` for the block; with `open`, open closed pools in this loop
    first and close them after. Yields the `Isolation`; rolls back and drops at exit."""
    iso = Isolation(manager).start()
    opened = False
    try:
        if open and any(manager.pool(n).closed for n in manager.names):
            await manager.open()
            opened = True
        yield iso
    finally:
        try:
            await iso.aclose()
        finally:
            if opened:
                await manager.close()


@contextlib.asynccontextmanager
async def open_pools(isolation: Isolation) -> AsyncIterator[ConnectionManager]:
    """The body of `connman_pools`, for your own async fixture: the isolated manager with its
    pools open in the running loop (opened here if closed, and closed after); rolls back at exit."""
    manager = isolation.manager
    async with contextlib.AsyncExitStack() as stack:
        if any(manager.pool(n).closed for n in manager.names):
            await manager.open()
            stack.push_async_callback(manager.close)
        stack.push_async_callback(isolation.aclose)
        yield manager


def mark_app(app: Any) -> Any:
    """Mark `app`'s calls as the app's (`connman.testing.binding.AppMark`), so the isolation tells
    a request's unit of work from one the test opens itself; returns what to serve.

    A Starlette/FastAPI app gets the mark as its outermost middleware, in place, so clients the
    tests build themselves on it are marked too (returns the app); any other ASGI app is returned
    wrapped. Idempotent.
    """
    from .binding import AppMark

    if isinstance(app, AppMark):
        return app
    middleware = getattr(app, "user_middleware", None)
    if isinstance(middleware, list):
        if not any(getattr(m, "cls", None) is AppMark for m in middleware):
            from starlette.middleware import Middleware

            middleware.insert(0, Middleware(AppMark))
            if getattr(app, "middleware_stack", None) is not None:
                app.middleware_stack = None  # rebuilt, with the mark, at the next call
        return app
    return AppMark(app)


class SessionRuntime:
    """The app's lifespan and pools kept open across the tests of one event loop (a session-scoped
    loop), so they open and warm once per session (per xdist worker) instead of once per test;
    each test is still isolated. Made by the plugin; `aclose()` ends it in that loop."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    async def ensure(self, app: Any | None, isolation: Isolation) -> None:
        """Open (once, in the running loop) the app's lifespan — or the pools alone with no app —
        with the isolation paused, so what the app's startup writes stays for the session."""
        loop = asyncio.get_running_loop()
        if self.loop is loop:
            return
        if self.loop is not None and not self.loop.is_closed():
            raise RuntimeError("connman: the pools are kept open in another event loop that is "
                               "still running; use one loop scope for the whole session")
        self.loop, self._stack = loop, contextlib.AsyncExitStack()
        manager = isolation.manager
        with isolation.paused():
            lifespan = getattr(getattr(app, "router", None), "lifespan_context", None)
            if lifespan is not None:
                await self._stack.enter_async_context(lifespan(app))
            if any(manager.pool(n).closed for n in manager.names):
                await manager.open()
                self._stack.push_async_callback(manager.close)

    async def aclose(self) -> None:
        """End the lifespan and close the pools (in the loop they were opened in)."""
        stack, self._stack, self.loop = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def close(self) -> None:
        """`aclose()` from synchronous code, once the loop is idle; nothing if it is closed."""
        loop = self.loop
        if loop is not None and not loop.is_closed() and not loop.is_running():
            loop.run_until_complete(self.aclose())
        self._stack = self.loop = None


@contextlib.asynccontextmanager
async def session_client(app: Any, isolation: Isolation, runtime: SessionRuntime, *,
                         base_url: str = "http://test") -> AsyncIterator[Any]:
    """Like `app_client`, the lifespan and pools kept open in `runtime` across tests."""
    import httpx

    await runtime.ensure(app, isolation)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(isolation.aclose)
        yield await stack.enter_async_context(httpx.AsyncClient(
            transport=httpx.ASGITransport(app=mark_app(app), raise_app_exceptions=False),
            base_url=base_url))


@contextlib.asynccontextmanager
async def app_client(app: Any, isolation: Isolation, *,
                     base_url: str = "http://test") -> AsyncIterator[Any]:
    """The body of `connman_client`, for your own async fixture: an `httpx.AsyncClient` on `app`
    (at `base_url`, path prefix included; a handler's exception is a 500), the app's lifespan run
    in the running loop, the pools open and isolated; rolls back at exit."""
    import httpx

    async with contextlib.AsyncExitStack() as stack:
        lifespan = getattr(getattr(app, "router", None), "lifespan_context", None)
        if lifespan is not None:
            await stack.enter_async_context(lifespan(app))
        await stack.enter_async_context(open_pools(isolation))
        yield await stack.enter_async_context(httpx.AsyncClient(
            transport=httpx.ASGITransport(app=mark_app(app), raise_app_exceptions=False),
            base_url=base_url))
