"""`reset_on_return="full"`: clear what a unit of work left on its connection's server session.

What each server keeps per connection, and how it is cleared, is in docs/semantics.md. One
coroutine per driver, on the driver's own connection, after the open transaction was rolled back:

- asyncpg: `Connection.reset()` (what asyncpg's own pool runs on release: advisory locks, cursors,
  LISTEN, session settings) and `DISCARD TEMP` (temporary tables).
- psycopg: what `DISCARD ALL` clears but its prepared statements, outside a transaction (see
  `drivers/psycopg.py`).
- aiomysql, asyncmy: the protocol's COM_RESET_CONNECTION (session variables, user variables,
  temporary tables, named locks, prepared statements), then the character set and autocommit mode
  the driver had set are set again. Neither driver exposes the command, so it is sent with their
  private `_execute_command`/`_read_ok_packet`, here and nowhere else.
- aiosqlite: temporary tables are dropped (SQLite has no other per-connection state a unit can
  change without a PRAGMA).

The pool's `on_connect` hooks run again afterwards (the caller does that), so what they set at
connect holds again.
"""

from __future__ import annotations

import inspect
from typing import Any

from .drivers import psycopg as psycopg_driver

COM_RESET_CONNECTION = 0x1F


async def _asyncpg(conn: Any) -> None:
    await conn.reset()
    await conn.execute("DISCARD TEMP")


async def mysql_cursor(conn: Any) -> Any:
    """A cursor of an aiomysql or asyncmy connection (aiomysql's `cursor()` is an awaitable,
    asyncmy's returns the cursor itself)."""
    cur = conn.cursor()
    return await cur if inspect.isawaitable(cur) else cur


async def _mysql(conn: Any) -> None:
    autocommit = bool(conn.get_autocommit())
    charset = getattr(conn, "charset", None) or getattr(conn, "_charset", None) or "utf8mb4"
    await conn._execute_command(COM_RESET_CONNECTION, b"")
    await conn._read_ok_packet()
    cur = await mysql_cursor(conn)
    try:
        await cur.execute(f"SET NAMES {charset}, autocommit = {int(autocommit)}")
    finally:
        await cur.close()


async def _aiosqlite(conn: Any) -> None:
    async with conn.execute("SELECT name FROM sqlite_temp_master WHERE type = 'table'") as cur:
        names = [row[0] for row in await cur.fetchall()]
    for name in names:
        quoted = '"' + name.replace('"', '""') + '"'
        await conn.execute(f"DROP TABLE temp.{quoted}")
    if names:
        await conn.commit()


FULL_RESET = {"asyncpg": _asyncpg, "psycopg": psycopg_driver.full_reset, "aiomysql": _mysql,
              "asyncmy": _mysql, "aiosqlite": _aiosqlite}
"""driver -> coroutine function(driver connection): the full reset, transaction already ended."""
