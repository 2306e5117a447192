"""Prometheus export: a custom collector over every pool's `stats()`, and FastAPI helpers.

    from connman.metrics.prometheus import metrics_response, register

    register(manager)                      # the default registry, once at startup

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return metrics_response()

Gauges stay gauges, counters become `<namespace>_<key>_total`, and the `_ms` counters are exported
in seconds as `<namespace>_<key minus _ms>_seconds_total`. Every series carries exactly two labels,
`pool` and `backend`; nothing from the URL (host, path, user, password) is ever exported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import MissingDependency

try:
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, make_asgi_app
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, choose_encoder
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependency("connman.metrics.prometheus needs prometheus_client: "
                            "pip install 'connman[prometheus]'") from exc

from ..stats import COUNTER_KEYS, GAUGE_KEYS
from . import STAT_HELP

if TYPE_CHECKING:
    from starlette.responses import Response

    from ..manager import ConnectionManager

__all__ = ["LABELS", "PrometheusCollector", "metric_name", "metrics_app", "metrics_response",
           "register"]

LABELS = ("pool", "backend")


def metric_name(key: str, namespace: str = "connman") -> str:
    """The exported family name of a stat key (`_ms` keys become `_seconds`; no `_total`)."""
    base = f"{key[:-3]}_seconds" if key.endswith("_ms") else key
    return f"{namespace}_{base}" if namespace else base


class PrometheusCollector:
    """A `prometheus_client` collector: one family per stat key, one series per pool."""

    def __init__(self, manager: ConnectionManager, namespace: str = "connman") -> None:
        self.manager = manager
        self.namespace = namespace

    def _families(self) -> tuple[dict[str, GaugeMetricFamily], dict[str, CounterMetricFamily]]:
        gauges = {key: GaugeMetricFamily(metric_name(key, self.namespace),
                                         STAT_HELP.get(key, key), labels=LABELS)
                  for key in GAUGE_KEYS}
        counters = {}
        for key in COUNTER_KEYS:
            seconds = key.endswith("_ms")
            counters[key] = CounterMetricFamily(
                metric_name(key, self.namespace),
                STAT_HELP.get(key, key) + (" In seconds." if seconds else ""),
                labels=LABELS, unit="seconds" if seconds else "")
        return gauges, counters

    def describe(self) -> Iterator[Metric]:
        """The families without samples, so registering never reads the pools."""
        gauges, counters = self._families()
        yield from gauges.values()
        yield from counters.values()

    def collect(self) -> Iterator[Metric]:
        """One family per stat key with a sample per pool, read from `Pool.stats()` now."""
        gauges, counters = self._families()
        for name in self.manager.names:
            pool = self.manager.pool(name)
            stats = pool.stats()
            labels = [pool.name, pool.backend]
            for key, gauge in gauges.items():
                if key in stats:
                    gauge.add_metric(labels, float(stats[key]))
            for key, counter in counters.items():
                if key in stats:
                    value = stats[key] / 1000.0 if key.endswith("_ms") else float(stats[key])
                    counter.add_metric(labels, value)
        yield from gauges.values()
        yield from counters.values()


def register(manager: ConnectionManager, registry: CollectorRegistry | None = None, *,
             namespace: str = "connman") -> PrometheusCollector:
    """Register a `PrometheusCollector` for `manager` (default registry if None) and return it."""
    collector = PrometheusCollector(manager, namespace)
    (REGISTRY if registry is None else registry).register(collector)
    return collector


def metrics_response(registry: CollectorRegistry | None = None, *,
                     accept: str | None = None) -> Response:
    """A Starlette `Response` with the registry's exposition (OpenMetrics if `accept` asks)."""
    try:
        from starlette.responses import Response
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependency("metrics_response needs Starlette: "
                                "pip install 'connman[fastapi]'") from exc
    reg = REGISTRY if registry is None else registry
    if accept:
        encoder, content_type = choose_encoder(accept)
        return Response(encoder(reg), media_type=content_type)
    return Response(generate_latest(reg), media_type=CONTENT_TYPE_LATEST)


def metrics_app(registry: CollectorRegistry | None = None) -> Callable[..., Any]:
    """An ASGI app serving the registry, to mount: `app.mount("/metrics", metrics_app())`."""
    return make_asgi_app(REGISTRY if registry is None else registry)
