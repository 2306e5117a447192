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
  private `_execute_command`/`_read_ok_packet`, in `drivers/mysql.py` and nowhere else.
- aiosqlite: temporary tables are dropped (SQLite has no other per-connection state a unit can
  change without a PRAGMA).

The pool's `on_connect` hooks run again afterwards (the caller does that), so what they set at
connect holds again.
"""

from __future__ import annotations

from typing import Any

from .drivers import mysql as mysql_driver
from .drivers import psycopg as psycopg_driver
from .drivers.mysql import cursor as mysql_cursor

__all__ = ["FULL_RESET", "mysql_cursor"]


async def _asyncpg(conn: Any) -> None:
    await conn.reset()
    await conn.execute("DISCARD TEMP")


async def _aiosqlite(conn: Any) -> None:
    async with conn.execute("SELECT name FROM sqlite_temp_master WHERE type = 'table'") as cur:
        names = [row[0] for row in await cur.fetchall()]
    for name in names:
        quoted = '"' + name.replace('"', '""') + '"'
        await conn.execute(f"DROP TABLE temp.{quoted}")
    if names:
        await conn.commit()


FULL_RESET = {"asyncpg": _asyncpg, "psycopg": psycopg_driver.full_reset,
              "aiomysql": mysql_driver.full_reset, "asyncmy": mysql_driver.full_reset,
              "aiosqlite": _aiosqlite}
"""driver -> coroutine function(driver connection): the full reset, transaction already ended."""
