"""OpenTelemetry export following the semantic conventions for DB client connection pools.

    from connman.metrics.otel import instrument

    instrumentation = instrument(manager)   # the global MeterProvider, or pass meter_provider=
    ...
    instrumentation.close()                 # stop reporting this manager

Observable instruments read `Pool.stats()` at each collection; the three histograms (seconds) are
fed from the manager's events. Every point carries `db.client.connection.pool.name` = the pool's
name (plus `db.client.connection.state` on `db.client.connection.count`); nothing from the URL.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..errors import MissingDependency

try:
    from opentelemetry.metrics import (
        CallbackOptions,
        Histogram,
        Meter,
        MeterProvider,
        Observation,
        get_meter_provider,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependency("connman.metrics.otel needs OpenTelemetry: "
                            "pip install 'connman[otel]'") from exc

from ..stats import PoolEvent

if TYPE_CHECKING:
    from ..manager import ConnectionManager

__all__ = ["BUCKETS", "POOL_NAME", "STATE", "Instrumentation", "instrument"]

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"
# Histogram bucket boundaries advised to the SDK, in seconds (its default ones suit milliseconds).
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Instruments:
    """The instruments of one meter, created once; they report every live `Instrumentation`.

    Observable instruments cannot be unregistered, and the SDK hands back the first instrument of
    a name (ignoring new callbacks), so one set per meter serves every `instrument()` call.
    """

    def __init__(self, meter: Meter) -> None:
        self.live: list[Instrumentation] = []
        self.lock = threading.Lock()
        gauge = meter.create_observable_up_down_counter
        gauge("db.client.connection.count", [self._count], "{connection}",
              "The number of connections that are currently in state described by the state "
              "attribute.")
        gauge("db.client.connection.idle.max", [self._stat("pool_max")], "{connection}",
              "The maximum number of idle open connections allowed.")
        gauge("db.client.connection.idle.min", [self._stat("pool_min")], "{connection}",
              "The minimum number of idle open connections allowed.")
        gauge("db.client.connection.max", [self._stat("pool_max")], "{connection}",
              "The maximum number of open connections allowed.")
        gauge("db.client.connection.pending_requests", [self._stat("requests_waiting")],
              "{request}", "The number of current pending requests for an open connection.")
        meter.create_observable_counter(
            "db.client.connection.timeouts", [self._stat("requests_timeouts")], "{timeout}",
            "The number of connection timeouts that have occurred trying to obtain a connection "
            "from the pool.")
        self.create_time = meter.create_histogram(
            "db.client.connection.create_time", "s", "The time it took to create a new connection.",
            explicit_bucket_boundaries_advisory=BUCKETS)
        self.wait_time = meter.create_histogram(
            "db.client.connection.wait_time", "s",
            "The time it took to obtain an open connection from the pool.",
            explicit_bucket_boundaries_advisory=BUCKETS)
        self.use_time = meter.create_histogram(
            "db.client.connection.use_time", "s",
            "The time between borrowing a connection and returning it to the pool.",
            explicit_bucket_boundaries_advisory=BUCKETS)

    def _pools(self) -> list[tuple[dict[str, str], dict[str, int]]]:
        with self.lock:
            live = list(self.live)
        out = []
        for inst in live:
            manager = inst.manager
            for name in manager.names:
                pool = manager.pool(name)
                out.append(({POOL_NAME: pool.name}, pool.stats()))
        return out

    def _count(self, options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for attrs, stats in self._pools():
            idle = stats["pool_available"]
            out.append(Observation(idle, {**attrs, STATE: "idle"}))
            out.append(Observation(max(0, stats["pool_size"] - idle), {**attrs, STATE: "used"}))
        return out

    def _stat(self, key: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(stats[key], attrs) for attrs, stats in self._pools()]

        return callback


_by_meter: weakref.WeakKeyDictionary[Meter, _Instruments] = weakref.WeakKeyDictionary()
_by_meter_lock = threading.Lock()


def _instruments_for(meter: Meter) -> _Instruments:
    with _by_meter_lock:
        instruments = _by_meter.get(meter)
        if instruments is None:
            instruments = _by_meter[meter] = _Instruments(meter)
        return instruments


class Instrumentation:
    """One manager reported to OpenTelemetry; `close()` (or `uninstrument()`) stops it."""

    def __init__(self, manager: ConnectionManager, instruments: _Instruments) -> None:
        self.manager = manager
        self._instruments = instruments
        self._attrs: dict[str, dict[str, str]] = {}
        self._histograms: dict[str, Histogram] = {
            "connect": instruments.create_time,
            "checkout": instruments.wait_time,
            "checkin": instruments.use_time,
        }
        with instruments.lock:
            instruments.live.append(self)
        self._unsubscribe: Callable[[], None] | None = manager.on("*", self._on_event)

    @property
    def closed(self) -> bool:
        """Whether this manager is no longer reported."""
        return self._unsubscribe is None

    def _on_event(self, event: PoolEvent) -> None:
        histogram = self._histograms.get(event.name)
        if histogram is None:
            return
        attrs = self._attrs.get(event.pool)
        if attrs is None:
            attrs = self._attrs[event.pool] = {POOL_NAME: event.pool}
        histogram.record(event.duration_ms / 1000.0, attrs)

    def close(self) -> None:
        """Unsubscribe from the manager's events and stop observing its pools; idempotent."""
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is None:
            return
        unsubscribe()
        with self._instruments.lock:
            if self in self._instruments.live:
                self._instruments.live.remove(self)

    uninstrument = close

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def instrument(manager: ConnectionManager,
               meter_provider: MeterProvider | None = None) -> Instrumentation:
    """Report `manager`'s pools to OpenTelemetry (the global MeterProvider if None)."""
    from .. import __version__

    provider = get_meter_provider() if meter_provider is None else meter_provider
    meter = provider.get_meter("connman", __version__)
    return Instrumentation(manager, _instruments_for(meter))
