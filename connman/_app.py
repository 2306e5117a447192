"""What connman reads from a FastAPI/Starlette app: its `on_event` handlers, the pools it uses."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

__all__ = ["event_handlers", "run_event_handlers"]

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
