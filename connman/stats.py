"""Pool statistics with stable keys, and the event hub every backend reports to."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["COUNTER_KEYS", "EVENT_NAMES", "GAUGE_KEYS", "STAT_KEYS", "EventHub", "PoolEvent",
           "PoolStats"]

logger = logging.getLogger("connman")

# Gauges: the pool's state now. Counters: totals since the pool opened (or the last pop_stats()).
GAUGE_KEYS = (
    "pool_min",            # size
    "pool_max",            # size + overflow
    "pool_size",           # connections open now, in use or idle
    "pool_available",      # connections open and idle now
    "requests_active",     # sessions holding a connection now
    "requests_waiting",    # sessions waiting for a connection now
)
COUNTER_KEYS = (
    "requests_num",             # sessions granted a connection
    "requests_queued",          # sessions that had to wait
    "requests_wait_ms",         # total time spent waiting
    "requests_errors",          # sessions refused: timeouts, too many waiters, pool closed
    "requests_timeouts",        # sessions that waited `timeout` and got PoolTimeout
    "requests_rejected",        # sessions refused at once by `max_waiting` (TooManyWaiters)
    "requests_unavailable",     # requests that ended in ServerUnavailable (refused, full, locked, ...)
    "requests_lost",            # requests whose connection the server ended (ConnectionLost)
    "usage_ms",                 # total time connections were held by sessions
    "connections_num",          # connection attempts made to the server
    "connections_ms",           # total time spent establishing connections
    "connections_errors",       # connection attempts that failed
    "connections_lost",         # open connections found broken (server gone, killed, error)
    "connections_closed",       # connections closed for any reason
    "connections_recycled",     # closed because older than `recycle`
    "connections_idle_closed",  # closed because unused longer than `idle`
    "leaks_detected",           # leases held longer than `leak_threshold`
)
STAT_KEYS = GAUGE_KEYS + COUNTER_KEYS

EventName = Literal["connect", "close", "checkout", "checkin", "timeout", "rejected", "lost",
                    "recycle", "idle_close", "leak"]
EVENT_NAMES: tuple[str, ...] = ("connect", "close", "checkout", "checkin", "timeout", "rejected",
                                "lost", "recycle", "idle_close", "leak")


@dataclass(frozen=True, slots=True)
class PoolEvent:
    """One thing that happened to a pool: its name, the event, a duration and a reason."""

    pool: str
    name: str
    backend: str
    duration_ms: float = 0.0
    reason: str = ""


@dataclass
class PoolStats:
    """Counters of one pool; thread-safe, since Motor reports from its worker threads."""

    # Times add up as floats (a thousand 0.4 ms waits are 400 ms, not 0) and show as whole ms.
    counters: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COUNTER_KEYS, 0.0))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, key: str, value: float = 1) -> None:
        """Add to one counter, from any thread (Motor's listeners run in worker threads)."""
        with self._lock:
            self.counters[key] += value

    def bump(self, key: str, value: float = 1) -> None:
        """Add to a counter that only the event loop's thread touches (the gate's); no lock."""
        self.counters[key] += value

    def snapshot(self) -> dict[str, int]:
        """The counters, in whole units (milliseconds for the `_ms` keys)."""
        with self._lock:
            return {k: int(v) for k, v in self.counters.items()}

    def pop(self) -> dict[str, int]:
        """The counters, then reset them to zero."""
        with self._lock:
            out = {k: int(v) for k, v in self.counters.items()}
            for key in self.counters:
                self.counters[key] = 0.0
            return out


Subscriber = Callable[[PoolEvent], None]


class EventHub:
    """Delivers pool events to subscribers; a failing subscriber is logged, never raised."""

    def __init__(self) -> None:
        self._subs: dict[str, list[Subscriber]] = {}

    def subscribe(self, name: str, fn: Subscriber) -> Callable[[], None]:
        """Call `fn(event)` for every event `name` ("*" for all); returns an unsubscribe."""
        if name != "*" and name not in EVENT_NAMES:
            raise ValueError(f"unknown event {name!r}; known: {', '.join(EVENT_NAMES)}")
        self._subs.setdefault(name, []).append(fn)

        def unsubscribe() -> None:
            subs = self._subs.get(name, [])
            if fn in subs:
                subs.remove(fn)
            if not subs:
                self._subs.pop(name, None)

        return unsubscribe

    @property
    def active(self) -> bool:
        """Whether anyone listens (emitting is skipped otherwise, to keep the hot path cheap)."""
        return bool(self._subs)

    def emit(self, event: PoolEvent) -> None:
        """Deliver one event to its subscribers and to the "*" subscribers."""
        for fn in (*self._subs.get(event.name, ()), *self._subs.get("*", ())):
            try:
                fn(event)
            except Exception:
                logger.exception("connman: event subscriber %r failed on %s", fn, event.name)
