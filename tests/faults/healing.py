"""Recovery figures for pools that heal (docs/outages.md, "Healing").

`python -m tests.faults.healing` starts throwaway servers and prints, for each case, the time from
the server answering again (the TCP proxy in front of it let through again) to the first unit of
work that succeeds, polled every 10 ms, with `connect_timeout=1`:

- a late pool (optional, its server refusing connections at startup) on each backend;
- a frozen replica (proxy black hole: nothing answers) that reads left for the primary.

Target: within `connect_timeout` plus one healing tick (`connman._healing.HEAL_TICK`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import text

from connman import ConnectionManager
from connman._healing import HEAL_TICK
from connman.testing.proxy import TcpProxy
from connman.testing.servers import (
    MariaDBServer,
    MongoWireServer,
    PostgresReplicaServer,
    PostgresServer,
    Server,
)

POLL = 0.01


async def unit_ok(m: ConnectionManager, name: str, *, readonly: bool = False,
                  want_replica: bool = False) -> bool:
    try:
        async with m.session(name, readonly=readonly) as unit:
            if hasattr(unit, "command"):
                await unit.command("ping")
                return True
            if want_replica:
                return bool((await unit.execute(text("SELECT pg_is_in_recovery()"))).scalar())
            await unit.execute(text("SELECT 1"))
            return True
    except Exception:
        return False


async def late_pool(url_of: Any, server: Server, driver: str | None = None) -> float:
    with TcpProxy(server.host, server.port) as proxy:
        proxy.cut()
        fields: dict[str, Any] = {"url": url_of(proxy.port), "size": 1, "connect_timeout": 1,
                                  "required": False}
        if driver:
            fields["driver"] = driver
        m = ConnectionManager({"late": fields})
        async with m:
            await asyncio.sleep(3)  # down a while: the backoff has reached its cap
            proxy.restore()
            t0 = time.monotonic()
            while not await unit_ok(m, "late"):
                await asyncio.sleep(POLL)
            return time.monotonic() - t0


async def frozen_replica(pg: PostgresServer, replica: PostgresReplicaServer) -> float:
    with TcpProxy(replica.host, replica.port) as proxy:
        url = replica.url(driver="asyncpg").replace(f":{replica.port}/", f":{proxy.port}/")
        m = ConnectionManager({"main": {"url": pg.url(driver="asyncpg"), "replicas": [url],
                                        "size": 1, "overflow": 1, "connect_timeout": 1,
                                        "statement_timeout": 2}})
        async with m:
            proxy.blackhole()
            while m.pool("main.replica1").outage is None:
                await unit_ok(m, "main", readonly=True)
            await asyncio.sleep(3)
            proxy.restore()
            t0 = time.monotonic()
            while not await unit_ok(m, "main", readonly=True, want_replica=True):
                await asyncio.sleep(POLL)
            return time.monotonic() - t0


def swap_port(url: str, old: int, new: int) -> str:
    return url.replace(f":{old}/", f":{new}/").replace(f":{old}?", f":{new}?")


async def main() -> None:
    print(f"connect_timeout=1 s, HEAL_TICK={HEAL_TICK:g} s; from the server answering again "
          "to the first success:")
    with PostgresServer() as pg:
        for driver in ("asyncpg",):
            took = await late_pool(lambda p, d=driver: swap_port(pg.url(driver=d), pg.port, p), pg)
            print(f"  late pool, PostgreSQL ({driver}): {took * 1000:.0f} ms")
        with PostgresReplicaServer(pg) as replica:
            took = await frozen_replica(pg, replica)
            print(f"  frozen replica, PostgreSQL (asyncpg): {took * 1000:.0f} ms")
    with MariaDBServer() as my:
        for driver in ("aiomysql", "asyncmy"):
            took = await late_pool(lambda p, d=driver: swap_port(my.url(driver=d), my.port, p), my)
            print(f"  late pool, MariaDB ({driver}): {took * 1000:.0f} ms")
    with MongoWireServer() as mongo:
        for driver in ("pymongo", "motor"):
            took = await late_pool(lambda p: swap_port(mongo.url(database="app"), mongo.port, p),
                                   mongo, driver)
            print(f"  late pool, Mongo ({driver}): {took * 1000:.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())
