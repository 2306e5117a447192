"""The main job on embedded defaults: the example app with a SQLite pool and an embedded
MongoDB-wire server (SecantusDB — not mongod), driven by real HTTP requests, printing each pool.

    python -m examples.demo [--requests 400] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

import httpx
import uvicorn

from connman import ConnectionManager
from connman.testing.servers import MongoWireServer, free_port

from .app import create_app, create_schema


async def drive(base: str, requests: int, concurrency: int) -> tuple[dict[int, int], float]:
    """Half the requests create users, then the other half read them back, `concurrency` at once."""
    codes: dict[int, int] = {}
    sem = asyncio.Semaphore(concurrency)
    writes = requests // 2
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def one(i: int) -> None:
            async with sem:
                if i < writes:
                    r = await client.post("/users", params={"name": f"user-{i}"})
                else:
                    r = await client.get(f"/users/{i - writes + 1}")
                codes[r.status_code] = codes.get(r.status_code, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(writes)))
        await asyncio.gather(*(one(i) for i in range(writes, requests)))
        return codes, time.perf_counter() - t0


async def main(requests: int, concurrency: int) -> int:
    workdir = tempfile.mkdtemp(prefix="connman-demo-")
    with MongoWireServer() as mongo:
        print(f"embedded MongoDB-wire server (SecantusDB) on {mongo.host}:{mongo.port}")
        manager = ConnectionManager({
            "main": {"url": f"sqlite+aiosqlite:///{os.path.join(workdir, 'app.db')}",
                     "size": 5, "overflow": 5, "timeout": 10},
            "docs": {"url": mongo.url(database="demo"), "size": 5, "overflow": 5, "timeout": 10},
        })
        print(repr(manager))
        app = create_app(manager)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_level="warning"))
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.02)
        await create_schema(manager)
        base = f"http://127.0.0.1:{port}"
        codes, elapsed = await drive(base, requests, concurrency)
        async with httpx.AsyncClient(base_url=base) as client:
            health = (await client.get("/internal/health")).json()
        print(f"\n{requests} HTTP requests at concurrency {concurrency} in {elapsed:.2f}s "
              f"({requests / elapsed:.0f} req/s); status codes: {codes}")
        print(f"health: {health['status']} " + ", ".join(
            f"{n}={p['status']} ({p.get('ping_ms', '-')} ms)" for n, p in health["pools"].items()))
        print("\npool state:")
        for name in manager.names:
            print(f"  {manager.pool(name).state()}")
        keys = ("requests_num", "requests_waiting", "requests_wait_ms", "requests_timeouts",
                "usage_ms", "connections_num", "connections_closed", "pool_size", "pool_available")
        print(f"\n  {'stat':<22}" + "".join(f"{n:>10}" for n in manager.names))
        for key in keys:
            print(f"  {key:<22}" + "".join(f"{manager.stats(n)[key]:>10}" for n in manager.names))
        server.should_exit = True
        await task
        print(f"\nafter shutdown: {manager!r}")
        ok = codes.get(200, 0) == requests and health["status"] == "up"
        return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args.requests, args.concurrency)))
