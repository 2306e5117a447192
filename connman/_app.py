"""What connman reads from a FastAPI/Starlette app: its `on_event` handlers, the pools it uses.

Private attributes of Starlette/FastAPI reached (checked by tests/test_reaches.py on both
dependency sets):

- `_DefaultLifespan` (`starlette.routing`; FastAPI's own copy in `fastapi.routing` since FastAPI
  moved the `on_event` handlers into its own router): the class of `router.lifespan_context`
  when the app was given no `lifespan=`. `event_handlers()` tells by it whether the framework
  runs the `on_event` handlers itself; no public attribute says whether a lifespan was given.
- `State._state` (`starlette.datastructures.State`): the dict behind `app.state`, read by
  `state_values()` (`connman.testing`'s plugin finds the app's manager there); `State` has no
  public way to list what it holds.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

__all__ = ["event_handlers", "run_event_handlers", "state_values"]

logger = logging.getLogger("connman")


def event_handlers(app: Any) -> tuple[list[Callable[[], Any]], list[Callable[[], Any]]]:
    """The app's `@app.on_event("startup")` and `("shutdown")` handlers that its router will not
    run itself: FastAPI (0.121 through Starlette's router, newer ones in its own) keeps them in
    `app.router.on_startup` / `on_shutdown` and runs them only from its default lifespan, which a
    `lifespan=` argument replaces. ([], []) for anything else."""
    router = getattr(app, "router", None)  # any ASGI app may come here: not all have one
    startup = list(getattr(router, "on_startup", None) or ())
    shutdown = list(getattr(router, "on_shutdown", None) or ())
    if isinstance(getattr(router, "lifespan_context", None), default_lifespans()):
        return [], []  # the framework's own lifespan runs them
    return startup, shutdown


def default_lifespans() -> tuple[type, ...]:
    """The classes of a router's lifespan when the app was given none: Starlette's, and FastAPI's
    own copy in the FastAPI releases that have one (each import is a version branch: a release
    without it does not use it; tests/test_reaches.py pins that a default app's lifespan is one
    of them)."""
    found: list[type] = []
    for module_name in ("starlette.routing", "fastapi.routing"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # not installed: no app of it either
            continue
        cls = vars(module).get("_DefaultLifespan")  # FastAPI's own copy: newer releases only
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def state_values(app: Any) -> list[Any]:
    """What a Starlette/FastAPI app holds in `app.state` ([] for an app without a `State`)."""
    try:
        from starlette.datastructures import State
    except ImportError:
        return []
    state = getattr(app, "state", None)  # any ASGI app may come here: not all have one
    if not isinstance(state, State):
        return []
    held: dict[str, Any] = state._state
    return list(held.values())


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
