"""The small FastAPI app the fault scenarios load: one write, one read and one slow route.

    POST /items/{key}    writes one row (SQL) or document (Mongo) via Depends(manager.session("main"))
    GET  /items/{key}    200 if the key is there, 404 if not
    GET  /replica/{key}  (a pool with replicas) reads it with readonly=True; 200 either way
    GET  /slow?seconds=  holds a connection that long (a server-side sleep on PostgreSQL/MariaDB)

Two plain ASGI middlewares make the outcome of every request observable:

- `TypedErrors` answers an exception that escaped the app with a 500 whose JSON body names its
  type (`{"error": "DBAPIError/ConnectionDoesNotExistError"}`), so the load generator can count
  errors by type, and counts what was served.
- `CancelOnDisconnect` cancels a `/slow` handler when its client goes away, as servers such as
  Hypercorn do (uvicorn alone lets the handler run on), so client disconnects really cancel tasks
  mid-query and mid-wait for a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import text

from connman import ConnectionManager

from .._targets import Ops

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def describe(exc: BaseException) -> str:
    """A short type label: `DBAPIError/ConnectionDoesNotExistError`, `AutoReconnect`, ..."""
    name = type(exc).__name__
    orig = getattr(exc, "orig", None)
    if orig is not None:
        name += f"/{type(orig).__name__}"
    return name


def _unknown_outcome(exc: BaseException) -> bool:
    """A Mongo write that failed in a way that leaves its outcome unknown to the client.

    The connection broke after the server may have applied it (a network error), or PyMongo's
    retryable-write retry found the document the first attempt inserted (a duplicate key: every
    request writes its own key). mongod answers such a retry with the first result; SecantusDB
    does not de-duplicate retries.
    """
    try:
        from pymongo.errors import ConnectionFailure, DuplicateKeyError
    except ImportError:
        return False
    return isinstance(exc, (ConnectionFailure, DuplicateKeyError))


class Served:
    """What the app answered, counted server-side (the scenarios watch it to time their faults)."""

    def __init__(self) -> None:
        self.total = 0
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.samples: dict[str, str] = {}
        """The first message seen for each error label."""
        self.written: set[str] = set()
        """Keys whose handler finished its insert (so an error after it came from COMMIT)."""
        self.last_ok = 0.0
        self.cancelled = 0
        """Handlers cancelled because their client disconnected."""

    def record(self, status: int, label: str = "") -> None:
        self.total += 1
        if 200 <= status < 300:
            self.ok += 1
            self.last_ok = time.monotonic()
        elif status >= 500:
            key = f"{status} {label}".strip()
            self.errors[key] = self.errors.get(key, 0) + 1


class TypedErrors:
    """Turn an escaped exception into a typed 500 and count every response."""

    def __init__(self, app: ASGIApp, served: Served) -> None:
        self.app = app
        self.served = served

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_counting(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                self.served.record(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        except Exception as exc:
            if started:
                raise
            label = describe(exc)
            if scope["method"] == "POST" and scope["path"].rpartition("/")[2] in self.served.written:
                label += " at commit"  # the handler's insert succeeded; the COMMIT failed
            elif scope["method"] == "POST" and _unknown_outcome(exc):
                label += " at commit"  # a Mongo write is its own commit: same unknown outcome
            self.served.record(500, label)
            self.served.samples.setdefault(label, str(exc).splitlines()[0][:200] if str(exc) else "")
            body = json.dumps({"error": label}).encode()
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})


class CancelOnDisconnect:
    """Cancel a GET handler on the given path when its client disconnects."""

    def __init__(self, app: ASGIApp, served: Served, path: str = "/slow") -> None:
        self.app = app
        self.served = served
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        first = await receive()  # the (empty) request body; the next message is the disconnect
        gone = asyncio.Event()
        replayed = False

        async def app_receive() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return first
            await gone.wait()
            return {"type": "http.disconnect"}

        handler = asyncio.ensure_future(self.app(scope, app_receive, send))
        watcher = asyncio.ensure_future(receive())
        try:
            await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not handler.done():
                message = watcher.result()
                if message["type"] == "http.disconnect":
                    gone.set()
                    handler.cancel()
                    self.served.cancelled += 1
            with contextlib.suppress(asyncio.CancelledError):
                await handler
        finally:
            for task in (handler, watcher):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task


async def fetch(ops: Ops, unit: Any, key: str) -> bool:
    """Whether `key` was written (read on the session's own connection)."""
    if ops.target.is_sql:
        row = (await unit.execute(text(f"SELECT 1 FROM {ops.table} WHERE k = :k"),
                                  {"k": key})).first()
        return row is not None
    return await unit[ops.table].find_one({"_id": key}) is not None


def build_app(manager: ConnectionManager, ops: Ops, *, cancel_on_disconnect: bool = False
              ) -> FastAPI:
    """The test app on pool "main" of `manager`, its lifespan opening and closing the pools.

    `app.state.served` counts responses and the handlers cancelled by a client disconnect.
    """
    app = FastAPI(lifespan=manager.lifespan)
    served = Served()
    app.state.served = served
    session = manager.session("main")

    # A Mongo write outside a transaction is its own commit: once it was sent, an error (a
    # StatementTimeout, a broken link) leaves its outcome unknown, as a failed COMMIT does.
    own_commit = ops.target.kind == "mongo" and not manager.pool("main").config.transaction

    @app.post("/items/{key}")
    async def write(key: str, unit: Any = Depends(session)) -> dict[str, str]:
        if own_commit:
            served.written.add(key)
        await ops.insert(unit, key)
        served.written.add(key)
        return {"key": key}

    @app.get("/items/{key}")
    async def read(key: str, unit: Any = Depends(session)) -> dict[str, str]:
        if not await fetch(ops, unit, key):
            raise HTTPException(404, f"no item {key!r}")
        return {"key": key}

    if manager.pool("main").config.replicas:
        readonly = manager.session("main", readonly=True)

        @app.get("/replica/{key}")
        async def read_replica(key: str, unit: Any = Depends(readonly)) -> dict[str, Any]:
            # Always 200: a replica may not have replayed the write yet (that is lag, not loss).
            return {"key": key, "found": await fetch(ops, unit, key)}

    @app.get("/slow")
    async def slow(seconds: float = 0.5, unit: Any = Depends(session)) -> dict[str, bool]:
        await ops.slow(unit, seconds)
        return {"ok": True}

    app.add_middleware(TypedErrors, served=served)
    if cancel_on_disconnect:  # added last, so outermost: the cancel passes through TypedErrors
        app.add_middleware(CancelOnDisconnect, served=served)
    return app
