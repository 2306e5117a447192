"""The backends the suite runs every shared behaviour on, and uniform operations over them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from connman.testing.servers import Server, free_port

PG_DRIVERS = ("asyncpg", "psycopg")
"""The PostgreSQL drivers among the targets."""


@dataclass
class Target:
    """One backend + driver on a real server (or a SQLite file)."""

    id: str
    kind: str  # "sql" | "mongo"
    driver: str
    server: Server | None
    sqlite_dir: str | None = None
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def url(self, database: str | None = None) -> str:
        if self.driver == "aiosqlite":
            assert self.sqlite_dir is not None
            return f"sqlite+aiosqlite:///{self.sqlite_dir}/connman-{self.tag}.db"
        assert self.server is not None
        if self.kind == "mongo":
            base = self.server.url(database=database or "connman")
            sep = "&" if "?" in base else "?"
            return base + sep + "serverMonitoringMode=poll&heartbeatFrequencyMS=500"
        return self.server.url(driver=self.driver)

    def config(self, **fields: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = {"url": self.url(), "size": 2, "overflow": 2, "timeout": 5.0,
                               "connect_timeout": 5.0}
        if self.kind == "mongo":
            cfg["driver"] = self.driver
        cfg.update(fields)
        return cfg

    @property
    def is_sql(self) -> bool:
        return self.kind == "sql"

    @property
    def is_postgres(self) -> bool:
        return self.driver in PG_DRIVERS


def app_name_args(driver: str, name: str) -> dict[str, Any]:
    """`connect_args` that give a PostgreSQL driver's connections `application_name` = `name`."""
    if driver == "asyncpg":
        return {"server_settings": {"application_name": name}}
    return {"application_name": name}


class Ops:
    """Uniform operations on a unit of work (an AsyncSession or a Mongo database handle)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.table = f"t_{uuid.uuid4().hex[:10]}"

    async def create(self, unit: Any) -> None:
        if self.target.is_sql:
            await unit.execute(text(f"CREATE TABLE {self.table} (k VARCHAR(64) PRIMARY KEY, v INT)"))
        else:
            await unit.create_collection(self.table)

    async def insert(self, unit: Any, key: str) -> None:
        if self.target.is_sql:
            await unit.execute(text(f"INSERT INTO {self.table} (k, v) VALUES (:k, 1)"), {"k": key})
        else:
            await unit[self.table].insert_one({"_id": key, "v": 1})

    async def keys(self, unit: Any) -> set[str]:
        if self.target.is_sql:
            rows = (await unit.execute(text(f"SELECT k FROM {self.table}"))).scalars().all()
            return set(rows)
        return {d["_id"] async for d in unit[self.table].find({}, {"_id": 1})}

    async def select1(self, unit: Any) -> None:
        if self.target.is_sql:
            assert (await unit.execute(text("SELECT 1"))).scalar() == 1
        else:
            assert (await unit.command("ping"))["ok"] == 1

    async def slow(self, unit: Any, seconds: float) -> None:
        """A query that keeps the server busy `seconds` (SQLite/Mongo: a query, then a sleep)."""
        driver = self.target.driver
        if driver in PG_DRIVERS:
            await unit.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})
        elif driver in ("aiomysql", "asyncmy"):
            await unit.execute(text("SELECT SLEEP(:s)"), {"s": seconds})
        else:
            await self.select1(unit)
            await asyncio.sleep(seconds)


async def server_connections(target: Target, app_filter: str | None = None) -> int | None:
    """How many client connections the server sees now, not counting this check's own."""
    if target.server is None:
        return None
    if target.driver in PG_DRIVERS:
        import asyncpg

        conn = await asyncpg.connect(target.server.url())
        try:
            return int(await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND pid <> pg_backend_pid()"))
        finally:
            await conn.close()
    if target.kind == "sql":
        import aiomysql

        url = target.server.url(driver="aiomysql")
        host, port = target.server.host, target.server.port
        del url
        conn = await aiomysql.connect(host=host, port=port, user="root", db="connman")
        try:
            async with conn.cursor() as cur:
                await cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                                  "WHERE ID <> CONNECTION_ID() AND COMMAND <> 'Daemon' "
                                  "AND USER <> 'system user'")
                row = await cur.fetchone()
                return int(row[0])
        finally:
            conn.close()
    return None


async def wait_for_count(target: Target, expected: int, timeout: float = 5.0) -> int | None:
    """Poll the server-side connection count until it equals `expected` (or time runs out)."""
    deadline = asyncio.get_running_loop().time() + timeout
    n = await server_connections(target)
    while n is not None and n != expected and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        n = await server_connections(target)
    return n


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Run `app` under uvicorn on a free loopback port, lifespan included; yields the base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn exited during startup")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


IN_CI = bool(os.environ.get("CI"))
