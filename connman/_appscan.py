"""Reading an app from outside (`connman check --app`): load it, find its managers and the pools
its routes depend on. Only the CLI imports this; the lifespan's own glue is `connman._app`."""

from __future__ import annotations

import importlib
from typing import Any

from .manager import ConnectionManager, SessionProvider

__all__ = ["load_app", "managers_of", "pools_used"]


def load_app(spec: str) -> tuple[Any, Any]:
    """(module, app) for `module:attribute` (`attribute` defaults to `app`), imported as uvicorn
    does, with the working directory on `sys.path`."""
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
