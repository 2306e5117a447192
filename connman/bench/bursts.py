"""The burst scenario: real traffic comes in bursts. `factor x size` units of work at once, a gap,
again; every variant side by side with the same pool limits: burst time and connections opened.

A unit holds one connection for a short server-side wait (PostgreSQL `pg_sleep(0.002)`, MySQL
`SLEEP(0.002)`; SQLite and Mongo: a point read). A pool that closes its overflow connections when
they come back reopens them in every burst; one that keeps them while they are used opens none
after the first.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event, text

from .scenarios import percentile
from .targets import TABLE, Target
from .variants import ConnmanVariant, FastVariant, HandMongo, HandSql, Variant

__all__ = ["PULSE_SQL", "BurstSeries", "burst_series", "burst_summary", "bursts_md", "probe"]

perf = time.perf_counter
PULSE_SQL = {"asyncpg": "SELECT pg_sleep(0.002)", "psycopg": "SELECT pg_sleep(0.002)",
             "aiomysql": "SELECT SLEEP(0.002)",
             "asyncmy": "SELECT SLEEP(0.002)", "aiosqlite": f"SELECT v FROM {TABLE} WHERE k = 1"}
"""One unit of burst work per SQL driver."""
Pulse = Callable[[int], Awaitable[None]]
Opened = Callable[[], "int | None"]


@dataclass
class BurstSeries:
    """One variant's bursts: each one's wall time (s), connections opened, errors."""

    seconds: list[float] = field(default_factory=list)
    opened: list[int | None] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""


async def _driver_pulse(driver: str, conn: Any, sql: str) -> None:
    if driver == "asyncpg":
        await conn.fetchval(sql)
    elif driver == "aiosqlite":
        async with conn.execute(sql) as cur:
            await cur.fetchone()
    else:
        async with conn.cursor() as cur:
            await cur.execute(sql)
            await cur.fetchone()


def probe(v: Variant) -> tuple[Pulse, Opened]:
    """(one unit of burst work, connections this variant has opened so far) for a variant."""
    target: Target = v.target
    driver = target.backend.driver
    sql = PULSE_SQL.get(driver, "")
    mongo = target.backend.family == "mongo"
    if isinstance(v, FastVariant):
        manager = v.manager

        async def fast(k: int) -> None:
            async with manager.connection("main") as conn:
                if mongo:
                    await conn[TABLE].find_one({"_id": k})
                else:
                    await _driver_pulse(driver, conn, sql)

        return fast, lambda: int(manager.stats("main")["connections_num"])
    if isinstance(v, ConnmanVariant):
        provider, manager = v.provider, v.manager
        stmt = text(sql) if sql else None

        async def session(k: int) -> None:
            async with provider as unit:
                if mongo:
                    await unit[TABLE].find_one({"_id": k})
                else:
                    await unit.execute(stmt)

        return session, lambda: int(manager.stats("main")["connections_num"])
    if isinstance(v, HandSql):
        assert v.engine is not None
        opened = [0]

        @event.listens_for(v.engine.sync_engine.pool, "connect")
        def on_connect(dbapi_con: Any, rec: Any) -> None:
            opened[0] += 1

        stmt = text(sql)

        async def hand(k: int) -> None:
            async with v.db() as s:
                await s.execute(stmt)

        return hand, lambda: opened[0]
    if isinstance(v, HandMongo):  # hand and raw Mongo: the client directly
        counter = v.opened
        coll = v.client[target.database][TABLE]

        async def client(k: int) -> None:
            await coll.find_one({"_id": k})

        return client, counter
    from .raw import RawSql

    assert isinstance(v, RawSql)
    raw = v

    async def pooled(k: int) -> None:
        async with raw.acquire() as conn:
            await _driver_pulse(driver, conn, sql)

    return pooled, raw.opened


async def burst_series(pulse: Pulse, opened: Opened, units: int, bursts: int, gap_s: float
                       ) -> BurstSeries:
    """`bursts` bursts of `units` concurrent pulses, `gap_s` apart."""
    out = BurstSeries()

    async def one(k: int) -> None:
        try:
            await pulse(k)
        except Exception as exc:
            out.errors += 1
            out.first_error = out.first_error or f"{type(exc).__name__}: {exc}"[:300]

    for i in range(bursts):
        if i:
            await asyncio.sleep(gap_s)
        before = opened()
        t0 = perf()
        await asyncio.gather(*(one(k % 1000 + 1) for k in range(units)))
        out.seconds.append(perf() - t0)
        after = opened()
        out.opened.append(None if before is None or after is None else after - before)
    return out


def burst_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per backend and variant: median/p99 burst ms over every burst of every repetition, the
    median per repetition (for min-max), connections opened in the first burst and after it."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["backend"], r["variant"]), []).append(r)
    out = []
    for (backend, variant), reps in groups.items():
        ms = sorted(x for r in reps for x in r["burst_ms"])
        per_rep = [statistics.median(r["burst_ms"]) for r in reps]
        later = [o for r in reps for o in r["opened"][1:] if o is not None]
        first = [r["opened"][0] for r in reps if r["opened"] and r["opened"][0] is not None]
        out.append({
            "backend": backend, "variant": variant, "reps": len(reps),
            "bursts": sum(len(r["burst_ms"]) for r in reps), "units": reps[0]["units"],
            "median_ms": round(statistics.median(ms), 3) if ms else None,
            "p99_ms": round(percentile(ms, 99), 3) if ms else None,
            "rep_median_ms": [round(x, 3) for x in per_rep],
            "opened_first": round(statistics.median(first), 1) if first else None,
            "opened_per_burst_after_first": round(sum(later) / len(later), 2) if later else None,
            "opened_total": sum(o for r in reps for o in r["opened"] if o is not None)
            if first else None,
            "errors": sum(r["errors"] for r in reps),
        })
    return out


def burst_ratios(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per backend: fast/raw and connman/hand median burst time, per repetition min-max too."""
    by = {(s["backend"], s["variant"]): s for s in summary}
    out = []
    for backend in dict.fromkeys(s["backend"] for s in summary):
        row: dict[str, Any] = {"backend": backend}
        for a, b in (("fast", "raw"), ("connman", "hand")):
            sa, sb = by.get((backend, a)), by.get((backend, b))
            if not sa or not sb or not sa["median_ms"] or not sb["median_ms"]:
                continue
            row[f"{a}/{b}"] = round(sa["median_ms"] / sb["median_ms"], 3)
            pairs = [x / y for x, y in zip(sa["rep_median_ms"], sb["rep_median_ms"], strict=False)
                     if y]
            row[f"{a}/{b} range"] = [round(min(pairs), 3), round(max(pairs), 3)] if pairs else None
        out.append(row)
    return out


def bursts_md(results: dict[str, Any]) -> list[str]:
    """The burst section of results.md."""
    rows = results.get("bursts_summary") or []
    if not rows:
        return []
    plan = results["plan"]
    order = ("connman", "fast", "hand", "raw")
    lines = [
        "## Bursts", "",
        f"{plan['burst_factor']}× size units of work at once, {plan['bursts']} bursts "
        f"{plan['burst_gap_s'] * 1000:.0f} ms apart, pool size {plan['burst_size']} + overflow "
        f"{plan['burst_overflow']} for every variant (asyncpg/aiomysql/asyncmy pools: "
        "min_size=size, max_size=size+overflow), repetitions rotated. A unit: PostgreSQL "
        "`SELECT pg_sleep(0.002)`, MySQL `SELECT SLEEP(0.002)`, SQLite and Mongo a point read. "
        "Burst time: from the first unit started to the last done. Connections opened: the "
        "driver's connect events (raw MySQL pools: growth of `pool.size`; the raw SQLite "
        "variant is one connection). PyMongo opens at most two connections at a time "
        "(`maxConnecting`), so a Mongo pool grows over the first few bursts: compare the "
        "opened total with `overflow` (per repetition).", "",
        "| backend | variant | median burst ms | p99 ms | per-repetition medians | opened, first "
        "burst | opened per burst after the first | opened in all bursts | errors |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    rows = sorted(rows, key=lambda r: (results["backends"].index(r["backend"])
                                       if r["backend"] in results["backends"] else 99,
                                       order.index(r["variant"]) if r["variant"] in order else 9))

    def cell(x: Any) -> str:
        return "-" if x is None else f"{x:g}"

    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['variant']} | {cell(r['median_ms'])} | {cell(r['p99_ms'])} | "
            + ", ".join(f"{x:.1f}" for x in r["rep_median_ms"])
            + f" | {cell(r['opened_first'])} | {cell(r['opened_per_burst_after_first'])} | "
            f"{cell(r['opened_total'])} | {r['errors']} |")
    ratios = results.get("bursts_ratios") or []
    if ratios:
        lines += ["", "| backend | fast / raw burst time | connman / hand burst time |",
                  "| --- | ---: | ---: |"]

        def ratio(r: dict[str, Any], key: str) -> str:
            if key not in r:
                return "-"
            span = r.get(f"{key} range")
            return f"{r[key]:.2f}" + (f" ({span[0]:.2f}–{span[1]:.2f})" if span else "")

        for r in ratios:
            lines.append(f"| {r['backend']} | {ratio(r, 'fast/raw')} | "
                         f"{ratio(r, 'connman/hand')} |")
        lines += ["", "Below 1: the first is faster. Targets: fast/raw ≤ 1.2, connman/hand ≤ 0.5 "
                  "on PostgreSQL, and 0 connections opened per burst after the first."]
    return [*lines, ""]
