"""Long soak: many sessions on PostgreSQL and on the Mongo-wire server, bursts and steady load mixed,
with pauses long enough for the overflow to be closed and reopened; the process's memory (RSS)
after warm-up and at the end.

    python benchmarks/soak.py [--sessions 200000] [--backends postgres mongo] [--json FILE]

Starts throwaway servers (or uses CONNMAN_TEST_POSTGRES_URL / CONNMAN_TEST_MONGO_URL). Prints one
JSON line per backend and exits 1 if any unit of work failed or a connection is left open.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from connman import ConnectionManager
from connman.testing.servers import MongoWireServer, PostgresServer, Server

WARMUP = 10_000
"""Sessions before the first RSS reading (caches, pools and the allocator settle first)."""
BURST, STEADY = 100, 5
"""Concurrency of a burst and of the steady load between bursts."""


def rss_kib() -> int:
    """Resident set size of this process, KiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


async def soak(kind: str, url: str, sessions: int) -> dict[str, Any]:
    """Run `sessions` units of work in cycles of bursts, steady load and idle pauses."""
    cfg: dict[str, Any] = {"url": url, "size": 10, "overflow": 20, "overflow_idle": 1.0,
                           "timeout": 30.0}
    if kind == "mongo":
        cfg["database"] = "soak"
    manager = ConnectionManager({"main": cfg})
    done = errors = 0
    first_error = ""
    stmt = text("SELECT 1")

    async def unit(k: int) -> None:
        nonlocal done, errors, first_error
        try:
            async with manager.session("main") as s:
                if kind == "mongo":
                    await s["soak"].find_one({"_id": k % 100})
                else:
                    await s.execute(stmt)
        except Exception as exc:
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"[:200]
        done += 1

    async def steady(n: int) -> None:
        remaining = n

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await unit(remaining)

        await asyncio.gather(*(worker() for _ in range(STEADY)))

    rss_warm: int | None = None
    t0 = time.monotonic()
    cycles = pauses = 0
    async with manager:
        if kind == "mongo":
            async with manager.session("main") as db:
                await db["soak"].delete_many({})
                await db["soak"].insert_many([{"_id": i, "v": i} for i in range(100)])
        while done < sessions:
            for _ in range(5):  # five bursts 50 ms apart
                await asyncio.gather(*(unit(i) for i in range(BURST)))
                await asyncio.sleep(0.05)
            await steady(500)
            cycles += 1
            if cycles % 20 == 0:  # idle past overflow_idle: the overflow is closed, then reopened
                await asyncio.sleep(1.5)
                pauses += 1
            if rss_warm is None and done >= min(WARMUP, sessions // 5):
                gc.collect()
                rss_warm = rss_kib()
        gc.collect()
        rss_end = rss_kib()
        stats = manager.stats("main")
    after = manager.stats("main")  # closed: nothing may be open or active
    wall = time.monotonic() - t0
    return {"backend": kind, "sessions": done, "errors": errors, "first_error": first_error,
            "wall_s": round(wall, 1), "sessions_per_s": round(done / wall),
            "rss_after_warmup_kib": rss_warm, "rss_end_kib": rss_end,
            "rss_growth_kib": None if rss_warm is None else rss_end - rss_warm,
            "idle_pauses": pauses, "connections_num": stats["connections_num"],
            "connections_idle_closed": stats["connections_idle_closed"],
            "pool_size_after_close": after["pool_size"],
            "requests_active_after": after["requests_active"]}


def main(argv: list[str] | None = None) -> int:
    """Run the soak on each backend; print and optionally write the results."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=200_000)
    p.add_argument("--backends", nargs="+", default=["postgres", "mongo"],
                   choices=["postgres", "mongo"])
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    results: list[dict[str, Any]] = []
    ok = True
    for kind in args.backends:
        env = os.environ.get(f"CONNMAN_TEST_{kind.upper()}_URL")
        server: Server | None = None
        if env:
            url = env
        else:
            server = (PostgresServer() if kind == "postgres" else MongoWireServer()).start()
            url = server.url(driver="asyncpg") if kind == "postgres" else server.url(
                database="soak")
        try:
            out = asyncio.run(soak(kind, url, args.sessions))
        finally:
            if server is not None:
                server.stop()
        print(json.dumps(out), flush=True)
        results.append(out)
        ok = ok and out["errors"] == 0 and out["pool_size_after_close"] == 0
    if args.json is not None:
        import sqlalchemy

        args.json.write_text(json.dumps({
            "command": " ".join(["python benchmarks/soak.py", *(argv or sys.argv[1:])]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "sqlalchemy": sqlalchemy.__version__, "results": results}, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
