"""Metrics exporters over real SQLite pools: Prometheus exposition and OpenTelemetry points."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from fastapi import FastAPI, Response
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    Sum,
)
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from connman import COUNTER_KEYS, GAUGE_KEYS, ConnectionManager, PoolTimeout
from connman.metrics.otel import instrument
from connman.metrics.prometheus import (
    PrometheusCollector,
    metrics_app,
    metrics_response,
    register,
)

SECRET = "s3cr3t-token"  # in the database file names: must never reach an exporter
SEQUENTIAL = 5  # plain sessions on "main" before the pool is exhausted
GRANTED = SEQUENTIAL + 3 + 1  # + three held at once + one that waited and got a connection
POOL = "db.client.connection.pool.name"
STATE = "db.client.connection.state"


def make_manager(tmp_path: Path) -> ConnectionManager:
    return ConnectionManager({
        "main": {"url": f"sqlite+aiosqlite:///{tmp_path / SECRET}-main.sqlite3",
                 "size": 2, "overflow": 1, "timeout": 0.2},
        "other": {"url": f"sqlite+aiosqlite:///{tmp_path / SECRET}-other.sqlite3",
                  "size": 1, "overflow": 0, "timeout": 0.2},
    })


async def select1(m: ConnectionManager, name: str = "main") -> None:
    async with m.session(name) as s:
        assert (await s.execute(sqlalchemy.text("select 1"))).scalar_one() == 1


async def scenario(m: ConnectionManager, while_exhausted: Callable[[], None]) -> None:
    """5 sessions, then 3 held at once: a 4th times out, a 5th waits and gets one on release.

    `while_exhausted` runs when 3 connections are in use and one session waits.
    """
    for _ in range(SEQUENTIAL):
        await select1(m)
    await select1(m, "other")
    async with contextlib.AsyncExitStack() as held:
        for _ in range(3):
            s = await held.enter_async_context(m.session("main"))
            await s.execute(sqlalchemy.text("select 1"))
        with pytest.raises(PoolTimeout):
            async with m.session("main"):
                pass
        waiter = asyncio.create_task(select1(m))
        await asyncio.sleep(0.05)
        assert m.stats("main")["requests_waiting"] == 1
        while_exhausted()
    await waiter


def assert_final_stats(stats: dict[str, int]) -> None:
    """What the scenario leaves in the stats of "main", independently of any exporter."""
    assert stats["requests_num"] == GRANTED
    assert stats["requests_queued"] == 1
    assert stats["requests_timeouts"] == 1
    assert stats["connections_num"] == 3  # 2 warmed at open + 1 overflow
    # The overflow connection stays open until idle for `overflow_idle` (300 s by default).
    assert (stats["pool_size"], stats["pool_available"], stats["requests_active"]) == (3, 3, 0)


# ---------------------------------------------------------------------------------- Prometheus
def parse(text: str) -> tuple[dict[str, str], dict[tuple[str, str], float], list[dict[str, str]]]:
    """(family -> type, (sample name, pool) -> value, every sample's labels) of connman_* metrics."""
    types: dict[str, str] = {}
    values: dict[tuple[str, str], float] = {}
    labels: list[dict[str, str]] = []
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("connman_"):
            continue
        types[family.name] = family.type
        for sample in family.samples:
            labels.append(dict(sample.labels))
            key = (sample.name, sample.labels.get("pool", ""))
            assert key not in values, f"duplicate series {key}"
            values[key] = sample.value
    return types, values, labels


EXPECTED_COUNTERS = {
    # stat key -> exported family (the sample adds _total); _ms counters become seconds
    "requests_num": "connman_requests_num",
    "requests_queued": "connman_requests_queued",
    "requests_wait_ms": "connman_requests_wait_seconds",
    "requests_errors": "connman_requests_errors",
    "requests_timeouts": "connman_requests_timeouts",
    "requests_rejected": "connman_requests_rejected",
    "requests_unavailable": "connman_requests_unavailable",
    "requests_lost": "connman_requests_lost",
    "usage_ms": "connman_usage_seconds",
    "connections_num": "connman_connections_num",
    "connections_ms": "connman_connections_seconds",
    "connections_errors": "connman_connections_errors",
    "connections_lost": "connman_connections_lost",
    "connections_closed": "connman_connections_closed",
    "connections_recycled": "connman_connections_recycled",
    "connections_idle_closed": "connman_connections_idle_closed",
    "leaks_detected": "connman_leaks_detected",
}


async def test_prometheus_exports_every_stat_of_every_pool(tmp_path: Path) -> None:
    m = make_manager(tmp_path)
    registry = CollectorRegistry()
    collector = register(m, registry)
    assert isinstance(collector, PrometheusCollector)
    exhausted: list[str] = []
    async with m:
        await scenario(m, lambda: exhausted.append(generate_latest(registry).decode()))
        text = generate_latest(registry).decode()
        stats = m.stats()
    assert_final_stats(stats["main"])
    types, values, labels = parse(text)

    assert set(EXPECTED_COUNTERS) == set(COUNTER_KEYS)
    assert types == {**{f"connman_{k}": "gauge" for k in GAUGE_KEYS},
                     **{name: "counter" for name in EXPECTED_COUNTERS.values()}}
    assert {lab["pool"] for lab in labels} == {"main", "other"}
    assert all(set(lab) == {"pool", "backend"} and lab["backend"] == "sqlalchemy" for lab in labels)
    assert len(labels) == 2 * (len(GAUGE_KEYS) + len(COUNTER_KEYS))

    main = {name: v for (name, pool), v in values.items() if pool == "main"}
    assert main["connman_requests_timeouts_total"] == 1
    assert main["connman_requests_errors_total"] == 1
    assert main["connman_requests_num_total"] == GRANTED
    assert main["connman_requests_queued_total"] == 1
    assert main["connman_pool_max"] == 3
    assert main["connman_pool_min"] == 2
    assert main["connman_pool_size"] == 3  # the overflow connection is kept (overflow_idle)
    assert main["connman_pool_available"] == 3
    assert main["connman_connections_num_total"] == 3
    # in seconds: the timed-out wait alone was 0.2 s; three sessions were held across it
    assert 0.2 <= main["connman_requests_wait_seconds_total"] < 5
    assert 0.6 <= main["connman_usage_seconds_total"] < 30
    assert values[("connman_requests_num_total", "other")] == 1
    assert values[("connman_pool_max", "other")] == 1
    # every series is exactly the pool's stat of the same moment
    for pool, pool_stats in stats.items():
        for key in GAUGE_KEYS:
            assert values[(f"connman_{key}", pool)] == pool_stats[key], key
        for key, name in EXPECTED_COUNTERS.items():
            scale = 1000 if key.endswith("_ms") else 1
            assert values[(f"{name}_total", pool)] == pytest.approx(pool_stats[key] / scale), key

    (during,) = exhausted
    _, mid, _ = parse(during)
    assert mid[("connman_requests_active", "main")] == 3
    assert mid[("connman_requests_waiting", "main")] == 1
    assert mid[("connman_pool_size", "main")] == 3
    assert mid[("connman_pool_available", "main")] == 0
    assert mid[("connman_requests_timeouts_total", "main")] == 1

    for output in (text, during):
        assert SECRET not in output
        assert str(tmp_path) not in output
        assert "sqlite3" not in output
    assert REGISTRY.get_sample_value("connman_pool_max", {"pool": "main", "backend": "sqlalchemy"}) is None


def test_prometheus_namespace_and_duplicate_registration(tmp_path: Path) -> None:
    m = make_manager(tmp_path)
    registry = CollectorRegistry()
    register(m, registry, namespace="app")
    assert registry.get_sample_value("app_pool_max", {"pool": "main", "backend": "sqlalchemy"}) == 3
    assert registry.get_sample_value("app_requests_wait_seconds_total",
                                     {"pool": "main", "backend": "sqlalchemy"}) == 0
    assert "connman_" not in generate_latest(registry).decode()
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        register(m, registry, namespace="app")


async def test_prometheus_fastapi_endpoints(tmp_path: Path) -> None:
    m = make_manager(tmp_path)
    registry = CollectorRegistry()
    register(m, registry)
    app = FastAPI()

    @app.get("/metrics")
    def metrics() -> Response:
        return metrics_response(registry)

    @app.get("/metrics/openmetrics")
    def openmetrics() -> Response:
        return metrics_response(registry, accept="application/openmetrics-text; version=1.0.0")

    app.mount("/prom", metrics_app(registry))
    async with m:
        await select1(m)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            plain = await client.get("/metrics")
            om = await client.get("/metrics/openmetrics")
            mounted = await client.get("/prom/")
    assert plain.status_code == 200
    assert plain.headers["content-type"].startswith("text/plain; version=")
    _, values, _ = parse(plain.text)
    assert values[("connman_requests_num_total", "main")] == 1
    assert values[("connman_pool_max", "main")] == 3
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.endswith("# EOF\n")
    assert "# UNIT connman_usage_seconds seconds" in om.text
    assert mounted.status_code == 200
    assert parse(mounted.text)[1][("connman_requests_num_total", "main")] == 1


# ---------------------------------------------------------------------------------- OpenTelemetry
def otel_metrics(reader: InMemoryMetricReader) -> dict[str, Metric]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, Metric] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            assert sm.scope.name == "connman"
            for metric in sm.metrics:
                out[metric.name] = metric
    return out


def point(metrics: dict[str, Metric], name: str, pool: str = "main",
          extra: dict[str, str] | None = None) -> Any:
    """The one data point of `name` whose attributes are exactly the pool (plus `extra`)."""
    wanted = {POOL: pool, **(extra or {})}
    found = [p for p in metrics[name].data.data_points if dict(p.attributes or {}) == wanted]
    assert len(found) == 1, (name, wanted, metrics[name].data.data_points)
    return found[0]


def count(metrics: dict[str, Metric], pool: str, state: str) -> Any:
    return point(metrics, "db.client.connection.count", pool, {STATE: state}).value


UPDOWN = {"db.client.connection.count": "{connection}", "db.client.connection.idle.max": "{connection}",
          "db.client.connection.idle.min": "{connection}", "db.client.connection.max": "{connection}",
          "db.client.connection.pending_requests": "{request}"}
HISTOGRAMS = ("db.client.connection.create_time", "db.client.connection.wait_time",
              "db.client.connection.use_time")


async def test_otel_reports_the_connection_pool_semantic_conventions(tmp_path: Path) -> None:
    m = make_manager(tmp_path)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrumentation = instrument(m, meter_provider=provider)
    exhausted: list[dict[str, Metric]] = []
    try:
        async with m:
            await scenario(m, lambda: exhausted.append(otel_metrics(reader)))
            final = otel_metrics(reader)
            stats = m.stats("main")
    finally:
        instrumentation.close()
        provider.shutdown()
    assert_final_stats(stats)

    assert set(final) == {*UPDOWN, "db.client.connection.timeouts", *HISTOGRAMS}
    for name, unit in UPDOWN.items():
        data = final[name].data
        assert isinstance(data, Sum), name
        assert not data.is_monotonic, name
        assert final[name].unit == unit
    timeouts = final["db.client.connection.timeouts"].data
    assert isinstance(timeouts, Sum)
    assert timeouts.is_monotonic
    for name in HISTOGRAMS:
        assert isinstance(final[name].data, Histogram), name
        assert final[name].unit == "s"
    for metric in final.values():
        for p in metric.data.data_points:
            attrs = dict(p.attributes or {})
            assert set(attrs) <= {POOL, STATE}
            assert attrs[POOL] in ("main", "other")
            assert not any(SECRET in str(v) or "sqlite" in str(v) for v in attrs.values())

    (mid,) = exhausted
    assert (count(mid, "main", "used"), count(mid, "main", "idle")) == (3, 0)
    assert point(mid, "db.client.connection.pending_requests").value == 1
    assert point(mid, "db.client.connection.timeouts").value == 1

    # The overflow connection stays open until idle for `overflow_idle`.
    assert (count(final, "main", "used"), count(final, "main", "idle")) == (0, 3)
    assert (count(final, "other", "used"), count(final, "other", "idle")) == (0, 1)
    assert point(final, "db.client.connection.idle.max").value == 3
    assert point(final, "db.client.connection.idle.min").value == 2
    assert point(final, "db.client.connection.max").value == 3
    assert point(final, "db.client.connection.max", "other").value == 1
    assert point(final, "db.client.connection.pending_requests").value == 0
    assert point(final, "db.client.connection.timeouts").value == 1
    assert point(final, "db.client.connection.timeouts", "other").value == 0

    wait: HistogramDataPoint = point(final, "db.client.connection.wait_time")
    assert wait.count == stats["requests_num"] == GRANTED  # the timed-out request obtained none
    assert 0.04 <= wait.max < 1  # the one queued session waited ~0.05 s (seconds, not ms)
    assert point(final, "db.client.connection.wait_time", "other").count == 1
    use: HistogramDataPoint = point(final, "db.client.connection.use_time")
    assert use.count == GRANTED
    assert 0.2 <= use.max < 30  # the held sessions outlived the 0.2 s timeout
    create: HistogramDataPoint = point(final, "db.client.connection.create_time")
    assert create.count == stats["connections_num"] == 3
    assert point(final, "db.client.connection.create_time", "other").count == 1


async def test_otel_close_stops_reporting_and_instrument_again_resumes(tmp_path: Path) -> None:
    m = make_manager(tmp_path)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    first = instrument(m, meter_provider=provider)
    try:
        async with m:
            await select1(m)
            assert point(otel_metrics(reader), "db.client.connection.wait_time").count == 1
            first.uninstrument()
            assert first.closed
            first.close()  # idempotent
            await select1(m)
            await select1(m)
            after = otel_metrics(reader)
            assert point(after, "db.client.connection.wait_time").count == 1
            assert "db.client.connection.count" not in after
            with instrument(m, meter_provider=provider):
                await select1(m)
                again = otel_metrics(reader)
            assert point(again, "db.client.connection.wait_time").count == 2
            assert count(again, "main", "idle") == 2
            await select1(m)
            assert point(otel_metrics(reader), "db.client.connection.wait_time").count == 2
    finally:
        first.close()
        provider.shutdown()


async def test_otel_create_time_measures_connection_setup(tmp_path: Path) -> None:
    m = make_manager(tmp_path)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        with instrument(m, meter_provider=provider):
            async with m:
                create = point(otel_metrics(reader), "db.client.connection.create_time")
    finally:
        provider.shutdown()
    assert create.count == 2
    assert create.sum > 0


# ---------------------------------------------------------------------------------- extras
def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          check=False, cwd=Path(__file__).resolve().parents[1])


def test_metrics_package_imports_without_the_extras() -> None:
    proc = run_python(
        "import sys\n"
        "sys.modules['prometheus_client'] = None\n"
        "sys.modules['opentelemetry'] = None\n"
        "import connman.metrics\n"
        "print(sorted(m for m in sys.modules if m.startswith(('prometheus_client', 'opentelemetry'))"
        " and sys.modules[m] is not None))\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize(("module", "blocked", "extra"), [
    ("connman.metrics.prometheus", "prometheus_client", "prometheus"),
    ("connman.metrics.otel", "opentelemetry", "otel"),
])
def test_missing_extra_raises_missing_dependency(module: str, blocked: str, extra: str) -> None:
    proc = run_python(
        "import sys\n"
        f"sys.modules[{blocked!r}] = None\n"
        "from connman.errors import MissingDependency\n"
        "try:\n"
        f"    import {module}\n"
        "except MissingDependency as exc:\n"
        "    print('MissingDependency:', exc)\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("MissingDependency:")
    assert f"pip install 'connman[{extra}]'" in proc.stdout
