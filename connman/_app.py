"""What connman reads from a FastAPI/Starlette app: its `on_event` handlers, the pools it uses."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

__all__ = ["event_handlers", "load_app", "managers_of", "pools_used", "run_event_handlers"]

logger = logging.getLogger("connman")


def event_handlers(app: Any) -> tuple[list[Callable[[], Any]], list[Callable[[], Any]]]:
    """The app's `@app.on_event("startup")` and `("shutdown")` handlers that its router will not
    run itself: FastAPI (0.121 through Starlette's router, newer ones in its own) keeps them in
    `app.router.on_startup` / `on_shutdown` and runs them only from its default lifespan, which a
    `lifespan=` argument replaces. ([], []) for anything else."""
    router = getattr(app, "router", None)
    startup = list(getattr(router, "on_startup", None) or ())
    shutdown = list(getattr(router, "on_shutdown", None) or ())
    if type(getattr(router, "lifespan_context", None)).__name__ == "_DefaultLifespan":
        return [], []  # the framework's own lifespan runs them
    return startup, shutdown


def _names(handlers: list[Callable[[], Any]]) -> str:
    return ", ".join(getattr(h, "__qualname__", repr(h)) for h in handlers)


async def _run(handler: Callable[[], Any]) -> None:
    result = handler()
    if inspect.isawaitable(result):
        await result


@asynccontextmanager
async def run_event_handlers(app: Any) -> AsyncIterator[None]:
    """Run the app's `on_event("startup")` handlers on entry (the pools are open then) and its
    `on_event("shutdown")` handlers on exit (before the pools close), in the order registered.

    A startup handler's error fails startup, as under FastAPI's default lifespan; a shutdown
    handler's error is logged and the next one still runs, so the pools still close.
    """
    startup, shutdown = event_handlers(app)
    if startup:
        logger.info("connman: running the app's on_event('startup') handlers %s after opening "
                    "the pools (FastAPI skips them when a lifespan is set)", _names(startup))
    for handler in startup:
        await _run(handler)
    try:
        yield
    finally:
        for handler in shutdown:
            try:
                await _run(handler)
            except Exception:
                logger.exception("connman: the app's on_event('shutdown') handler %s failed",
                                 _names([handler]))


# ---------------------------------------------------------------- the pools an app uses
def load_app(spec: str) -> tuple[Any, Any]:
    """(module, app) for `module:attribute` (`attribute` defaults to `app`), imported as uvicorn
    does, with the working directory on `sys.path`."""
    import importlib
    import os
    import sys

    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    app = module
    for part in (attr or "app").split("."):
        app = getattr(app, part)
    return module, app


def _route_name(route: Any) -> str:
    methods = sorted(getattr(route, "methods", None) or ()) or ["WEBSOCKET"]
    return f"{','.join(methods)} {getattr(route, 'path', '?')}"


def _routes(app: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every route of the app with its full path, mounted sub-apps included."""
    out: list[tuple[str, Any]] = []
    for route in getattr(app, "routes", None) or ():
        sub = getattr(route, "app", None)
        if getattr(route, "dependant", None) is None and getattr(sub, "routes", None) is not None:
            out.extend(_routes(sub, prefix + getattr(route, "path", "")))
        else:
            out.append((_route_name(route).replace(" ", f" {prefix}", 1), route))
    return out


def pools_used(app: Any) -> dict[str, list[str]]:
    """The pool names the app's routes depend on through `manager.session(name)` (directly or
    in a sub-dependency), each with the routes that use it, in route order."""
    from .manager import SessionProvider

    found: dict[str, list[str]] = {}
    for name, route in _routes(app):
        stack = [route.dependant] if getattr(route, "dependant", None) is not None else []
        while stack:
            dependant = stack.pop()
            call = getattr(dependant, "call", None)
            if isinstance(call, SessionProvider):
                users = found.setdefault(call.name, [])
                if name not in users:
                    users.append(name)
            stack.extend(getattr(dependant, "dependencies", ()))
    return found


def managers_of(app: Any, module: Any) -> list[Any]:
    """The `ConnectionManager`s the app runs: its lifespan's (`manager.lifespan`,
    `manager.wrap_lifespan(...)`), then those in the app module's globals."""
    from .manager import ConnectionManager

    found: list[Any] = []

    def visit(obj: Any, depth: int) -> None:
        if isinstance(obj, ConnectionManager):
            if obj not in found:
                found.append(obj)
            return
        if depth > 4 or obj is None:
            return
        visit(getattr(obj, "__self__", None), depth + 1)
        visit(getattr(obj, "__wrapped__", None), depth + 1)
        for cell in getattr(obj, "__closure__", None) or ():
            try:
                visit(cell.cell_contents, depth + 1)
            except ValueError:  # an empty cell
                continue

    visit(getattr(getattr(app, "router", None), "lifespan_context", None), 0)
    for value in list(vars(module).values()):
        visit(value, 4)
    return found
