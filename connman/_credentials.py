"""Credentials fetched for each new connection: the `credentials` field of a pool.

A provider is called inside the driver's own async connect, once per new connection, so an async
provider is simply awaited there (no blocking call, no thread) and a rotated password or token
(RDS IAM, Entra ID, Vault dynamic secrets) reaches every connection opened after the rotation.
Nothing here imports a driver: the backend hands each connect's keyword arguments through
`Credentials.apply`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from .errors import ServerUnavailable

__all__ = ["ConnectTarget", "Credentials", "provider_name"]


@dataclass(frozen=True)
class ConnectTarget:
    """What a connection is being opened to, for a `credentials` provider that takes one argument.

    An RDS IAM token is signed for one host, port and user: a provider that takes a target can
    serve a pool and its `replicas` alike. Never holds a password.
    """

    pool: str
    """The pool's name (a replica's is `main.replica1`)."""
    host: str | None
    """The host the driver connects to (a multi-host URL's list, comma-separated), if known."""
    port: int | None
    """The port, if known."""
    database: str | None
    """The database name, if the URL names one."""
    user: str | None
    """The URL's user, if it has one."""


def provider_name(provider: Any) -> str:
    """A provider's dotted name for reprs and errors: never its arguments (a `partial` may bind
    a token), never its value."""
    qualname = getattr(provider, "__qualname__", None)
    module = getattr(provider, "__module__", None)
    if isinstance(qualname, str) and isinstance(module, str):
        return f"{module}.{qualname}"
    cls = type(provider)
    return f"{cls.__module__}.{cls.__qualname__}"


def _takes_target(provider: Callable[..., Any]) -> bool:
    """Whether the provider can be called with one positional argument (the `ConnectTarget`)."""
    try:
        sig = inspect.signature(provider)
    except (TypeError, ValueError):  # a builtin without a signature: call it without one
        return False
    try:
        sig.bind(None)  # `def f(target)`, but also `def f(target=None)` or `def f(*args)`
    except TypeError:
        return False  # `def f()`, `lambda: ...`
    return True


def _first(kw: MutableMapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = kw.get(key)
        if value is not None:
            return value
    return None


class Credentials:
    """One pool's provider, called for each new connection within `timeout` seconds."""

    __slots__ = ("_name", "_pool", "_provider", "_retry_after", "_takes_target", "_timeout")

    def __init__(self, pool: str, provider: Callable[..., Any], timeout: float,
                 retry_after: int = 1) -> None:
        self._pool = pool
        self._retry_after = retry_after
        self._provider = provider
        self._name = provider_name(provider)
        self._takes_target = _takes_target(provider)
        self._timeout = timeout

    def _failed(self, why: str) -> ServerUnavailable:
        return ServerUnavailable(
            f"pool {self._pool!r}: the credentials provider {self._name} {why}; no connection "
            "was opened", pool=self._pool, kind="credentials", retry_after=self._retry_after)

    async def fetch(self, target: ConnectTarget) -> tuple[str | None, str]:
        """Call the provider (awaiting it if it returns an awaitable), within the timeout.

        Returns `(user or None, password)`. Raises `ServerUnavailable(kind="credentials")` naming
        the pool and the provider when it raises, times out or returns something else than a
        password or a `(user, password)` pair. The provider's own message is left out (it may
        quote a token or a secret's path) and its exception is not chained; it names only the
        exception's class.
        """
        failure: str | None = None
        value: Any = None
        deadline = asyncio.timeout(self._timeout)
        try:
            async with deadline:
                value = self._provider(target) if self._takes_target else self._provider()
                if inspect.isawaitable(value):
                    value = await value
        except TimeoutError as exc:
            failure = (f"did not answer within connect_timeout={self._timeout:g}s"
                       if deadline.expired() else f"raised {type(exc).__name__}")
        except Exception as exc:
            failure = f"raised {type(exc).__name__} (its message is not shown: it may hold a secret)"
        if failure is not None:
            raise self._failed(failure)
        got = _parse(value)
        if got is None:
            raise self._failed(f"returned a {type(value).__name__}, not a password (str or "
                               "SecretStr) or a (user, password) pair")
        return got

    async def apply(self, kw: MutableMapping[str, Any]) -> None:
        """Put the provider's user (if it gives one) and password into a driver connect's keyword
        arguments (`user`/`password`, which asyncpg, psycopg, aiomysql and asyncmy all take)."""
        port = _first(kw, "port")
        host = _first(kw, "host")
        target = ConnectTarget(
            pool=self._pool,
            host=",".join(map(str, host)) if isinstance(host, (list, tuple)) else host,
            port=port if isinstance(port, int) else None,
            database=_first(kw, "database", "db", "dbname"),
            user=_first(kw, "user"))
        user, password = await self.fetch(target)
        if user is not None:
            kw["user"] = user
        kw["password"] = password

    def __repr__(self) -> str:
        return f"<Credentials {self._name} for pool {self._pool!r}>"


def _secret(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    get = getattr(value, "get_secret_value", None)  # pydantic's SecretStr
    if callable(get):
        secret = get()
        return secret if isinstance(secret, str) else None
    return None


def _parse(value: Any) -> tuple[str | None, str] | None:
    """`(user, password)` from what a provider returned, or None if it is neither form."""
    password = _secret(value)
    if password is not None:
        return None, password
    if isinstance(value, (tuple, list)) and len(value) == 2:
        user, password = _secret(value[0]), _secret(value[1])
        if user is not None and password is not None:
            return user, password
    return None
