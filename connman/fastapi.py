"""FastAPI glue: 503 with `Retry-After` for an exhausted pool, exception handlers, a health router."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Callable, MutableMapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

try:
    from fastapi import APIRouter, FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse
    from starlette.exceptions import WebSocketException
    from starlette.requests import HTTPConnection
except ImportError as exc:  # pragma: no cover - depends on the environment
    from .errors import MissingDependency

    raise MissingDependency("connman.fastapi needs FastAPI: pip install 'connman[fastapi]'") from exc

from ._pool import checkout_site
from .errors import (
    CheckoutTimeout,
    ConnectionLost,
    PoolClosed,
    PoolNotOpen,
    PoolTimeout,
    ServerUnavailable,
    SessionInWebSocket,
    StatementTimeout,
    TransactionConflict,
)

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from ._pool import Pool


class _Provider(Protocol):
    """What this glue needs of `connman.SessionProvider` (`manager.session(name)`); a Protocol,
    so that `connman.manager` imports this module and not the other way round."""

    name: str

    def _open_unit(self) -> AbstractAsyncContextManager[Any]: ...


class _Manager(Protocol):
    """What the health router needs of `connman.ConnectionManager`."""

    @property
    def deferred(self) -> bool: ...

    @property
    def names(self) -> tuple[str, ...]: ...

    def pool(self, name: str) -> Pool: ...

__all__ = ["add_exception_handlers", "health_router", "route_of", "unavailable_from"]

logger = logging.getLogger("connman")


def unavailable_from(exc: BaseException) -> HTTPException | None:
    """The response a client should get for a pool error, or None for any other error.

    503 + `Retry-After` when no statement ran, so a retry is safe: the pool is exhausted
    (`PoolTimeout`, `TooManyWaiters`), its server did not answer the connect or pre-ping
    (`CheckoutTimeout`), or it is closing (never opened, `PoolNotOpen`: the reason, typically a
    lifespan that did not run, and no `Retry-After`). 503 without `Retry-After` for
    `StatementTimeout`: the database did not answer a statement in time; the unit of work was
    rolled back, but a COMMIT that timed out may have been applied, and a slow query retried at
    once only loads the database again, so no `Retry-After` invites a retry.
    """
    if isinstance(exc, StatementTimeout):
        # No Retry-After: something may have run (a COMMIT that timed out may have applied).
        return HTTPException(503, detail=f"database pool {exc.pool!r}: a statement got no answer "
                             "within statement_timeout")
    if isinstance(exc, CheckoutTimeout):
        return HTTPException(503, detail=f"database pool {exc.pool!r} is unavailable: its server "
                             "did not answer", headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, PoolTimeout):
        return HTTPException(503, detail=f"database pool {exc.pool!r} is busy",
                             headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, ServerUnavailable):
        if exc.kind == "down" and exc.since is not None:
            from ._healing import utc

            why = f"unreachable since {utc(exc.since)}"  # the cause stays in the logs
        else:
            why = exc.kind
        return HTTPException(503, detail=f"database pool {exc.pool!r} is unavailable: {why}",
                             headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, ConnectionLost):
        headers = None if exc.retry_after is None else {"Retry-After": str(exc.retry_after)}
        return HTTPException(503, detail=f"database pool {exc.pool!r}: the server ended the "
                             "connection", headers=headers)
    if isinstance(exc, TransactionConflict):
        return HTTPException(503, detail=f"database pool {exc.pool!r}: transaction conflict, retry",
                             headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, PoolNotOpen):
        # Never opened: retrying will not help, so no Retry-After; the detail says what to fix.
        return HTTPException(503, detail=f"database {exc}")
    if isinstance(exc, PoolClosed):
        return HTTPException(503, detail=f"database pool {exc.pool!r} is shutting down",
                             headers={"Retry-After": "1"})
    return None


def route_of(scope: MutableMapping[str, Any]) -> str:
    """The route an ASGI scope is for, as a person reads it: `GET /users/{user_id} (handler
    app.views.get_user)`; the path template when the router matched one, else the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None) or scope.get("path", "?")
    method = scope.get("method") or str(scope.get("type", "")).upper()
    endpoint = scope.get("endpoint")
    name = getattr(endpoint, "__qualname__", None)
    handler = f" (handler {endpoint.__module__}.{name})" if name else ""
    return f"{method} {path}{handler}"


def session_dependency(provider: _Provider) -> Callable[..., AsyncIterator[Any]]:
    """The generator FastAPI runs for `Depends(manager.session(name))`: one unit of work.

    The unit ends (commit or rollback, connection back) when the generator is closed, which
    FastAPI does per the provider's `scope`; a pool error becomes its 503 (`unavailable_from`).
    For a websocket route it raises `SessionInWebSocket` (as an HTTP 503 that refuses the
    handshake) before taking anything from the pool.
    """

    async def unit_of_work(connection: HTTPConnection) -> AsyncIterator[Any]:
        scope = connection.scope
        if scope["type"] == "websocket":
            raise _refuse_websocket(provider, scope)
        checkout_site.set(partial(route_of, scope))  # for a leak warning: who holds it
        try:
            async with provider._open_unit() as unit:
                yield unit
        except Exception as exc:
            http = unavailable_from(exc)
            if http is None:
                raise
            raise http from exc

    return unit_of_work


# The routes each provider refused and logged, so a reconnecting client does not flood the log.
_REFUSED_ROUTES: weakref.WeakKeyDictionary[_Provider, set[str]] = weakref.WeakKeyDictionary()


def _refuse_websocket(provider: _Provider, scope: MutableMapping[str, Any]
                      ) -> HTTPException | WebSocketException:
    """Why a websocket route gets no unit of work, as the error that refuses its handshake."""
    route = route_of(scope)
    error = SessionInWebSocket(
        f"pool {provider.name!r}: Depends(manager.session({provider.name!r})) in route {route} "
        "would hold one unit of work (a pool connection, on SQL an open transaction) for the "
        "socket's whole life; open one per message instead: `async with "
        f"manager.session({provider.name!r}) as db:` inside the receive loop "
        "(docs/semantics.md, \"WebSockets\")", pool=provider.name)
    logged = _REFUSED_ROUTES.setdefault(provider, set())
    if route not in logged:
        logged.add(route)
        logger.error("connman: %s", error)
    refusal: HTTPException | WebSocketException
    if "websocket.http.response" in scope.get("extensions", {}):
        # The server can answer the handshake with an HTTP response: 503 and the reason, no
        # Retry-After (a retry gets the same answer), as for a pool that was never opened.
        # The route and its handler's module path stay in the server's log, not in what any
        # client can read.
        public = route.split(" (handler ", 1)[0]
        refusal = HTTPException(503, detail=str(error).replace(route, public))
    else:  # close before accepting (the client sees 403); the reason is capped at 123 bytes
        refusal = WebSocketException(1011, reason=f"pool {provider.name!r}: no session "
                                     "dependency in a websocket route; see the server log")
    refusal.__cause__ = error
    return refusal


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    http = unavailable_from(exc)
    assert http is not None
    return JSONResponse({"detail": http.detail}, status_code=http.status_code,
                        headers=http.headers)


def add_exception_handlers(app: FastAPI) -> None:
    """Answer connman's errors raised anywhere in a handler as `Depends(manager.session(...))`
    answers them (see `unavailable_from`): 503 + `Retry-After` when nothing was applied
    (`PoolTimeout`, `CheckoutTimeout`, `TooManyWaiters`, `ServerUnavailable`,
    `TransactionConflict`, `PoolClosed`, a `ConnectionLost` before COMMIT), 503 without it when
    the outcome is unknown (`StatementTimeout`, a `ConnectionLost` during COMMIT).

    `Depends(manager.session(...))` needs none of this; it is for `async with manager.session()`
    and `manager.connection()` inside a handler, or background code that runs in a request.
    Without it, an outage met there reaches the client as a 500. Starlette picks a handler by the
    error's class first, so these win over an app's own handler for the driver's class.
    """
    app.add_exception_handler(PoolTimeout, _handle)
    app.add_exception_handler(PoolClosed, _handle)
    app.add_exception_handler(TransactionConflict, _handle)
    app.add_exception_handler(StatementTimeout, _handle)
    app.add_exception_handler(ServerUnavailable, _handle)
    app.add_exception_handler(ConnectionLost, _handle)


def health_router(manager: _Manager, *, prefix: str = "/health",
                  include_stats: bool = True, ping_timeout: float = 2.0, detail: bool = False,
                  dependencies: Sequence[Any] | None = None) -> APIRouter:
    """A router with GET `prefix`: each pool's status; 503 when a pool marked `required` is down.

    Each pool is checked with `Pool.probe()`: one round trip on a free connection, at most
    `ping_timeout` seconds, never a wait behind sessions. A pool's `status` is `"up"`, `"busy"`
    (every connection in use: working, saturated; still 200) or `"down"`, with `since` (UTC,
    when known) and `error` saying why in connman's own words ("unreachable since <time>").

    `detail=False` (the default) is for a public endpoint: status per pool only, no URLs, no
    driver errors, no stats. `detail=True` adds each pool's backend, driver, masked URL,
    `required`, `ping_ms`, the driver's error (masked) and, with `include_stats`, its stats:
    serve it on an internal port or behind an authenticating dependency
    (`manager.health_router(detail=True, dependencies=[Depends(check_token)])`), as it shows
    infrastructure (hosts, ports, users, database names). `dependencies` are FastAPI's own.
    """
    router = APIRouter(prefix=prefix, tags=["health"], dependencies=list(dependencies or ()))

    async def check(name: str) -> dict[str, Any]:
        pool = manager.pool(name)
        probe = await pool.probe(ping_timeout)
        status = probe["status"]
        if not detail:
            public: dict[str, Any] = {"status": status}
            if "since" in probe:
                public["since"] = probe["since"]
            if "reason" in probe:
                public["error"] = probe["reason"]
            return public
        entry: dict[str, Any] = {"backend": pool.backend, "driver": pool.config.driver_name,
                                 "url": pool.config.url.masked, "required": pool.config.required}
        entry.update({k: v for k, v in probe.items() if k != "reason"})
        if include_stats:
            entry["stats"] = pool.stats()
        return entry

    @router.get("", summary="Pool health")
    async def health() -> JSONResponse:
        if manager.deferred:  # pools read at open(), which has not run: nothing is up
            return JSONResponse({"status": "down", "pools": {},
                                 "detail": "the pools are not read yet: the app's lifespan, "
                                           "which opens them, did not run"}, status_code=503)
        names = manager.names
        results = await asyncio.gather(*(check(n) for n in names))
        pools = dict(zip(names, results, strict=True))
        down = [n for n, e in pools.items()
                if e["status"] == "down" and manager.pool(n).config.required]
        body = {"status": "down" if down else "up", "pools": pools}
        return JSONResponse(body, status_code=503 if down else 200)

    return router
