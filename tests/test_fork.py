"""Fork safety: a pool opened before a fork (gunicorn --preload, worker processes) in a real child.

The child's lifespan opens clients of its own; before that its sessions fail with a typed error
naming the pool; the parent's connections are never closed from the child.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import warnings
from multiprocessing.connection import Connection
from typing import Any

from sqlalchemy import text

from connman import ConnectionManager, PoolNotOpen

from ._targets import Target
from .conftest import only


async def _identity(target: Target, unit: Any) -> Any:
    """Which server connection the unit runs on (Mongo: the server's answer to a ping)."""
    if target.is_sql:
        return (await unit.execute(text("SELECT pg_backend_pid()"))).scalar()
    return (await unit.command("ping"))["ok"]


def _child(conn: Connection, manager: ConnectionManager, target: Target, parent_native: int
           ) -> None:
    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {"pid": os.getpid()}
        try:
            async with manager.session("main") as unit:
                await _identity(target, unit)
            out["before_open"] = "no error"
        except PoolNotOpen as exc:
            out["before_open"] = f"PoolNotOpen {exc.pool}"
        await manager.open()  # what the worker's lifespan does
        async with manager.session("main") as unit:
            out["identity"] = await _identity(target, unit)
        out["own_client"] = id(manager.native("main")) != parent_native
        await manager.close()
        return out

    try:
        conn.send(asyncio.run(main()))
    except BaseException as exc:  # report, do not hang the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


@only(kinds=("mongo",))
async def test_a_forked_worker_opens_its_own_pool_mongo(make_manager: Any, target: Target) -> None:
    await _run_fork(make_manager, target)


@only(kinds=("sql",), exclude=("sqlite", "mysql-aiomysql", "mysql-asyncmy"))
async def test_a_forked_worker_opens_its_own_pool_asyncpg(make_manager: Any, target: Target
                                                          ) -> None:
    await _run_fork(make_manager, target)


async def _run_fork(make_manager: Any, target: Target) -> None:
    m = make_manager(size=1, overflow=0)
    async with m:
        async with m.session("main") as unit:
            before = await _identity(target, unit)
        opened = m.stats("main")["connections_num"]
        ctx = multiprocessing.get_context("fork")
        parent_end, child_end = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(child_end, m, target, id(m.native("main"))))
        with warnings.catch_warnings():  # Python 3.12+: fork() of a process with threads
            warnings.simplefilter("ignore", DeprecationWarning)
            proc.start()
        child_end.close()
        ready = await asyncio.to_thread(parent_end.poll, 60)
        result = parent_end.recv() if ready else {"error": "no answer from the child in 60 s"}
        await asyncio.to_thread(proc.join, 10)
        assert "error" not in result, result
        assert result["pid"] != os.getpid()
        assert result["before_open"] == "PoolNotOpen main"
        assert result["own_client"]
        # The parent goes on with the very connection it had: the child closed none of it.
        async with m.session("main") as unit:
            assert await _identity(target, unit) == before
        if target.is_sql:
            assert result["identity"] != before  # the child had a server connection of its own
        assert m.stats("main")["connections_num"] == opened
        assert proc.exitcode == 0
