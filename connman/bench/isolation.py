"""Benchmark: what per-test isolation costs against what users do instead.

For a schema of 20 tables (each with a foreign key to the previous one), the same test body runs
through connman's sessions under four strategies, interleaved test by test in one run so they
share the machine's load:

- `baseline`: the body alone, its writes kept (no cleanup; the floor the others are measured on);
- `isolation`: `connman.testing.Isolation`: every unit of work in a savepoint of one outer
  transaction, rolled back after the test;
- `truncate`: the body commits, then every table is emptied (PostgreSQL: one `TRUNCATE ...
  RESTART IDENTITY CASCADE`; MariaDB: `TRUNCATE` per table with foreign key checks off; SQLite:
  `DELETE FROM` per table, children first);
- `create_drop`: the schema is created before the body and dropped after it.

Each strategy has a database of its own on the same server. Run:

    python -m connman.bench.isolation [--tests 30] [--backends asyncpg,psycopg,aiomysql,asyncmy,aiosqlite]

Servers are throwaway ones (or `CONNMAN_TEST_<KIND>_URL`). Prints one markdown table per backend:
milliseconds per test (median, p10-p90), the cost over the baseline, and that cost as a multiple
of isolation's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, func, insert, select

from ..manager import ConnectionManager
from ..testing.databases import TestServers
from ..testing.isolation import Isolation

__all__ = ["STRATEGIES", "main", "run"]

STRATEGIES = ("baseline", "isolation", "truncate", "create_drop")
TABLES = 20


def schema(tables: int = TABLES) -> MetaData:
    """`tables` tables t00..t19, each with a nullable foreign key to the one before."""
    metadata = MetaData()
    for i in range(tables):
        cols: list[Any] = [Column("id", Integer, primary_key=True), Column("name", String(50))]
        if i:
            cols.append(Column("parent_id", Integer, ForeignKey(f"t{i - 1:02d}.id"), nullable=True))
        Table(f"t{i:02d}", metadata, *cols)
    return metadata


async def body(manager: ConnectionManager, pool: str, metadata: MetaData) -> None:
    """A typical small test: two requests' worth of units of work, writing 3 tables, reading 1."""
    t = metadata.tables
    async with manager.session(pool) as db:
        await db.execute(insert(t["t00"]).values(name="a"))
        await db.execute(insert(t["t01"]).values(name="b"))
    async with manager.session(pool) as db:
        await db.execute(insert(t["t02"]).values(name="c"))
        assert (await db.execute(select(func.count()).select_from(t["t00"]))).scalar_one() >= 1


async def _truncate(manager: ConnectionManager, pool: str, metadata: MetaData) -> None:
    driver = manager.pool(pool).config.driver_name
    tables = [t.name for t in reversed(metadata.sorted_tables)]
    async with manager.native(pool).begin() as conn:
        if driver in ("asyncpg", "psycopg"):
            await conn.exec_driver_sql(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
        elif driver in ("aiomysql", "asyncmy"):
            await conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS=0")
            for name in tables:
                await conn.exec_driver_sql(f"TRUNCATE TABLE {name}")
            await conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS=1")
        else:
            for name in tables:
                await conn.exec_driver_sql(f"DELETE FROM {name}")


async def _ddl(manager: ConnectionManager, pool: str, metadata: MetaData, create: bool) -> None:
    async with manager.native(pool).begin() as conn:
        await conn.run_sync(metadata.create_all if create else metadata.drop_all)


def _test(strategy: str, manager: ConnectionManager, metadata: MetaData
          ) -> Callable[[], Awaitable[float]]:
    """One test of `strategy`; returns the milliseconds spent outside the body's own statements
    that are the strategy's doing (its setup and cleanup, timed where they run)."""
    pool = strategy

    async def baseline() -> float:
        await body(manager, pool, metadata)
        return 0.0

    async def isolation() -> float:
        t0 = time.perf_counter()
        iso = Isolation(manager).start()
        binding = iso.bindings[pool]
        # The outer transaction begins at the first unit of work; begin it here to time it.
        await binding.start()
        setup = time.perf_counter() - t0
        try:
            await body(manager, pool, metadata)
        finally:
            t1 = time.perf_counter()
            await iso.aclose()
        return (setup + time.perf_counter() - t1) * 1000

    async def truncate() -> float:
        await body(manager, pool, metadata)
        t1 = time.perf_counter()
        await _truncate(manager, pool, metadata)
        return (time.perf_counter() - t1) * 1000

    async def create_drop() -> float:
        t0 = time.perf_counter()
        await _ddl(manager, pool, metadata, True)
        setup = time.perf_counter() - t0
        await body(manager, pool, metadata)
        t1 = time.perf_counter()
        await _ddl(manager, pool, metadata, False)
        return (setup + time.perf_counter() - t1) * 1000

    return {"baseline": baseline, "isolation": isolation, "truncate": truncate,
            "create_drop": create_drop}[strategy]


async def _run_backend(urls: dict[str, str], tests: int
                       ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    metadata = schema()
    # One manager per strategy: Isolation binds every pool of the manager it is given.
    managers = {s: ConnectionManager({s: {"url": urls[s], "size": 2, "overflow": 0,
                                          "timeout": 60}}) for s in STRATEGIES}
    for s, m in managers.items():
        await m.open()
        if s != "create_drop":
            await _ddl(m, s, metadata, True)
    try:
        runs = {s: _test(s, managers[s], metadata) for s in STRATEGIES}
        for fn in runs.values():  # warm-up: one of each
            await fn()
        times: dict[str, list[float]] = {s: [] for s in STRATEGIES}
        costs: dict[str, list[float]] = {s: [] for s in STRATEGIES}
        for _ in range(tests):
            for s, fn in runs.items():
                t0 = time.perf_counter()
                cost = await fn()
                times[s].append((time.perf_counter() - t0) * 1000)
                costs[s].append(cost)
        return times, costs
    finally:
        for m in managers.values():
            await m.close()


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(values: list[float]) -> str:
    return (f"{statistics.median(values):.2f} ({_quantile(values, 0.1):.2f}–"
            f"{_quantile(values, 0.9):.2f})")


def report(backend: str, times: dict[str, list[float]], costs: dict[str, list[float]]) -> str:
    """One markdown table per backend: ms per test, ms of setup + cleanup, ratios to isolation."""
    iso_total = statistics.median(times["isolation"])
    iso_cost = statistics.median(costs["isolation"])
    lines = [f"### {backend}", "",
             "| strategy | ms per test, median (p10–p90) | setup + cleanup ms, median (p10–p90) "
             "| per test, × isolation | setup + cleanup, × isolation |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for s in STRATEGIES:
        total, cost = statistics.median(times[s]), statistics.median(costs[s])
        extra = ("| | |" if s == "baseline" else
                 f"| {total / iso_total:.1f} | {cost / iso_cost:.1f} |")
        lines.append(f"| {s} | {_ms(times[s])} | {'' if s == 'baseline' else _ms(costs[s])} "
                     + extra)
    return "\n".join(lines)


def run(backends: list[str], tests: int) -> str:
    """Run the scenario on each backend (a driver name); returns the markdown report."""
    tmp = Path(tempfile.mkdtemp(prefix="connman-bench-isolation-"))
    servers = TestServers(tmp, worker="")
    started = time.monotonic()
    out = [f"Per-test isolation vs truncation vs create/drop, {TABLES} tables, {tests} tests per "
           f"strategy, interleaved ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)", ""]
    try:
        for driver in backends:
            from ..config import PoolConfig

            urls = {}
            for s in STRATEGIES:
                sample = {"asyncpg": "postgresql+asyncpg://x/y",
                          "psycopg": "postgresql+psycopg://x/y", "aiomysql": "mysql+aiomysql://x/y",
                          "asyncmy": "mysql+asyncmy://x/y", "aiosqlite": "sqlite+aiosqlite:///x.db"}
                urls[s] = servers.url_for(f"bench_{s}", PoolConfig.model_validate({"url": sample[driver]}))
            times, costs = asyncio.run(_run_backend(urls, tests))
            out += [report(driver, times, costs), ""]
    finally:
        servers.stop()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    out.append(f"{time.monotonic() - started:.0f} s, {os.cpu_count()} CPUs, load average "
               f"{load:.1f} at the end.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    """Command line: `python -m connman.bench.isolation`."""
    parser = argparse.ArgumentParser(prog="python -m connman.bench.isolation",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tests", type=int, default=30, help="tests per strategy (default 30)")
    parser.add_argument("--backends", default="asyncpg,psycopg,aiomysql,asyncmy,aiosqlite",
                        help="comma-separated drivers (default: every SQL driver)")
    args = parser.parse_args(argv)
    print(run([b.strip() for b in args.backends.split(",") if b.strip()], args.tests))


if __name__ == "__main__":
    main()
