"""`connman size --measure`: how long a unit of work running the app's statement holds a
connection, or, without a statement, how long a ping takes, saying which."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from ._pool import Pool
from .errors import ConfigurationError

__all__ = ["measure_pool"]


async def _unit(pool: Pool, query: str) -> None:
    async with pool.session() as unit:
        if pool.backend == "sqlalchemy":
            from sqlalchemy import text

            await unit.execute(text(query))
            await unit.rollback()  # measured, not applied
        else:
            await unit.command(json.loads(query))


async def measure_pool(pool: Pool, query: str | None, samples: int) -> dict[str, Any]:
    """Run `query` `samples` times on the open `pool`, one after another, each in its own unit
    of work (SQL: rolled back; Mongo: the command runs as given), and time each unit from checkout
    to return; without `query`, time `samples` pings. Returns the times in milliseconds (`mean_ms`,
    `median_ms`, `p95_ms`), `what` was measured and a one-line `summary` saying so.

    Raises `ConfigurationError` for a Mongo `query` that is not a JSON command document; the
    statement's own error (a syntax error, a missing table) is raised as the driver raises it.
    """
    if query is not None and pool.backend != "sqlalchemy":
        try:
            command = json.loads(query)
        except ValueError:
            command = None
        if not isinstance(command, dict) or not command:
            raise ConfigurationError(f"pool {pool.name!r}: --query on a Mongo pool is a command "
                                     "as JSON, such as '{\"count\": \"users\"}'", pool=pool.name,
                                     field="query")
    times: list[float] = []
    for _ in range(samples):
        if query is None:
            times.append(await pool.ping())
            continue
        t0 = time.perf_counter()
        await _unit(pool, query)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    mean = statistics.fmean(times)
    median = times[len(times) // 2]
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    figures = f"mean {mean:.2f} ms, median {median:.2f} ms, p95 {p95:.2f} ms"
    if query is None:
        what = "ping"
        summary = (f"measured: {samples} pings on pool {pool.name!r} (a round trip that runs no "
                   f"query): {figures}. That is the least a request can hold a connection, not "
                   "your queries: the advice below fits only requests that barely touch the "
                   "database; give --query 'SELECT ...' (a statement your requests run) or "
                   "--query-ms for advice that fits your app.")
    else:
        what = "query"
        summary = (f"measured: {samples} runs of your statement on pool {pool.name!r}, each in "
                   "its own unit of work (checkout, statement, "
                   + ("rollback" if pool.backend == "sqlalchemy" else "command applied")
                   + f", return): {figures}; the advice uses the mean. A request that runs "
                   "several statements holds its connection for all of them: give --query-ms "
                   "for the whole request.")
    return {"what": what, "samples": samples, "mean_ms": round(mean, 3),
            "median_ms": round(median, 3), "p95_ms": round(p95, 3), "summary": summary}
