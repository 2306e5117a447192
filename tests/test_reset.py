"""`reset_on_return`: what survives a unit of work on its connection, session path and fast path.

A pool of one connection, so the second unit of work gets the first one's connection: with
`rollback` (the default, SQLAlchemy's) session state survives; with `full` it is gone, as after
asyncpg's own pool releases a connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from connman import ConnectionManager

from ._targets import Target
from .conftest import only
from .test_fast_path import execute, scalar

Make = Callable[..., ConnectionManager]

GONE = "no such table"

# (statements that leave state on the connection, query that reads it back, value when cleared)
STATE: dict[str, list[tuple[list[str], str, Any]]] = {
    "asyncpg": [
        (["SET statement_timeout = '123s'"], "SHOW statement_timeout", "0"),
        (["SELECT pg_advisory_lock(4242)"],
         "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()", 0),
        (["CREATE TEMP TABLE cm_tmp (a int)"], "SELECT to_regclass('pg_temp.cm_tmp') IS NULL",
         True),
        (["LISTEN cm_channel"],
         "SELECT count(*) FROM pg_listening_channels() WHERE pg_listening_channels = 'cm_channel'",
         0),
    ],
    "mysql": [
        (["SET @cm_var = 42"], "SELECT @cm_var IS NULL", 1),
        (["SET SESSION wait_timeout = 1234"],
         "SELECT @@session.wait_timeout = @@global.wait_timeout", 1),
        (["SELECT GET_LOCK('cm_lock', 0)"], "SELECT IS_USED_LOCK('cm_lock') IS NULL", 1),
        (["CREATE TEMPORARY TABLE cm_tmp (a INT)"], "SELECT COUNT(*) FROM cm_tmp", GONE),
    ],
    "aiosqlite": [
        (["CREATE TEMP TABLE cm_tmp (a INT)"],
         "SELECT count(*) FROM sqlite_temp_master WHERE name = 'cm_tmp'", 0),
    ],
}


# psycopg's fast path is in autocommit as asyncpg's; a session commits what the statements did.
STATE["psycopg"] = STATE["asyncpg"]


def cases(target: Target) -> list[tuple[list[str], str, Any]]:
    return STATE["mysql" if target.driver in ("aiomysql", "asyncmy") else target.driver]


async def session_value(m: ConnectionManager, sql: str) -> Any:
    try:
        async with m.session("main") as s:
            return (await s.execute(text(sql))).scalar()
    except Exception as exc:
        if "cm_tmp" in str(exc):
            return GONE
        raise


@only(kinds=("sql",))
@pytest.mark.parametrize("mode", ["rollback", "full"])
async def test_what_survives_a_session(make_manager: Make, target: Target, mode: str) -> None:
    hooks: list[int] = []
    m = make_manager(size=1, overflow=0, reset_on_return=mode)
    m.on_connect("main", lambda conn, rec: hooks.append(1))
    async with m:
        for statements, read, cleared in cases(target):
            async with m.session("main") as s:
                for sql in statements:
                    await s.execute(text(sql))
            value = await session_value(m, read)
            if mode == "full":
                assert value == cleared, (statements, value)
            else:
                assert value != cleared, (statements, value)
        assert m.stats("main")["connections_num"] == 1  # one connection all along
        # `full` runs the on_connect hooks again after each reset, so what they set holds.
        assert (len(hooks) > 1) == (mode == "full")


@only(kinds=("sql",))
@pytest.mark.parametrize("mode", ["rollback", "full"])
async def test_what_survives_the_fast_path(make_manager: Make, target: Target, mode: str) -> None:
    m = make_manager(size=1, overflow=0, reset_on_return=mode)
    async with m:
        for statements, read, cleared in cases(target):
            async with m.connection("main") as conn:
                driver_conn = conn._cm_conn
                for sql in statements:
                    await execute(target, conn, sql)
            async with m.connection("main") as conn:
                assert conn._cm_conn is driver_conn  # the same connection, reset, not replaced
                try:
                    value = await scalar(target, conn, read)
                except Exception as exc:
                    if "cm_tmp" not in str(exc):
                        raise
                    value = GONE
            if target.is_postgres and isinstance(cleared, str):
                value = str(value)
            if mode == "full":
                assert value == cleared, (statements, value)
            else:
                assert value != cleared, (statements, value)
        assert m.stats("main")["connections_num"] == 1
