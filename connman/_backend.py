"""What a backend implements: the verbs of `connman.Pool` that touch its driver.

`Pool` is a `Backend`; each backend (SQLAlchemy, Mongo) subclasses `Pool` and implements the
abstract verbs here, and overrides the optional hooks it needs. The gate, the lifecycle and the
stats around these verbs are `Pool`'s (`_pool.py`), written once for every backend.
"""

from __future__ import annotations

import abc
from typing import Any

from .errors import ConnmanError

__all__ = ["Backend"]


class Backend(abc.ABC):
    """The driver-facing verbs of a pool (abstract) and its optional hooks (defaults)."""

    @abc.abstractmethod
    async def _open(self) -> None:
        """Create the driver pool/client, warm `size` connections and ping once."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Dispose the driver pool/client; after it the server sees none of its connections."""

    @abc.abstractmethod
    async def _begin(self) -> Any:
        """Start the unit of work a session yields (an AsyncSession, a database handle)."""

    @abc.abstractmethod
    async def _end(self, unit: Any, error: BaseException | None) -> None:
        """End it: commit or roll back, and give the connection back, whatever happens."""

    @abc.abstractmethod
    async def _begin_raw(self) -> tuple[Any, Any]:
        """Check out the driver's own connection (the fast path): (handle, connection)."""

    @abc.abstractmethod
    async def _end_raw(self, handle: Any, error: BaseException | None) -> None:
        """Give the fast path's connection back."""

    @abc.abstractmethod
    async def _ping(self) -> float:
        """One round trip to the server (the caller holds a slot); latency in milliseconds."""

    @abc.abstractmethod
    def _gauges(self) -> tuple[int, int]:
        """(connections open now, connections idle now)."""

    @abc.abstractmethod
    def native(self) -> Any:
        """The driver object: an `AsyncEngine`, an `AsyncMongoClient` or a Motor client."""

    @abc.abstractmethod
    def driver_options(self) -> dict[str, Any]:
        """The keyword arguments the mapping produced for the driver (secrets masked)."""

    @abc.abstractmethod
    async def _server_info(self) -> dict[str, Any]:
        """Server version, connection limit and server-side connection count (slot held)."""

    def is_connection_error(self, exc: BaseException) -> bool:
        """Whether `exc` means the server could not be reached (so another replica may serve)."""
        return isinstance(exc, (OSError, ConnectionError)) and not isinstance(exc, ConnmanError)

    def _drop_driver(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Drop the driver objects without I/O: their event loop is gone (best effort)."""

    def off_books(self) -> int:
        """Connections the driver has checked out beyond what the gate accounts for (0: none).

        The gate invariant: every connection in use is held through a lease. A backend compares
        the driver's own count of checked-out connections with the leases (`requests_active`)
        and what it keeps aside itself; a positive number is a connection that escaped the gate.
        """
        return 0

    async def touch(self, unit: Any) -> None:  # noqa: B027 - optional hook, not abstract
        """Make a unit of work take its connection now (so a dead server shows before use)."""

    def _forget_after_fork(self) -> None:
        """In a forked child: drop the parent's driver pool without closing its connections.

        They belong to the parent process (same sockets); closing them here would cut the
        parent's sessions. Keep a reference so no finalizer closes them either. A backend that
        cannot do this raises, and the child's `open()` fails naming the pool.
        """
        raise NotImplementedError

    async def _maintain(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Periodic housekeeping a backend needs (emulated lifetimes); default: nothing."""

    def _maintenance_interval(self) -> float | None:
        return None
