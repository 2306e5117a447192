"""Closing driver connections whose event loop is gone.

A pool opened in one event loop (a test's, an `asyncio.run`) and closed from another, or after that
loop closed, cannot await its driver's close: every coroutine of those connections belongs to the
dead loop. What can still be done is to close their sockets directly, so the server sees them go and
no `ResourceWarning` is left for the garbage collector. How, is each driver's knowledge: its
module's `close_without_loop` in `backends/drivers/` (where the private attributes it reaches are
listed, with the contract tests in tests/test_reaches.py); this only dispatches.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("connman")


def close_driver_connection(conn: Any) -> None:
    """Close one driver connection (asyncpg, psycopg, aiomysql, asyncmy, aiosqlite) without
    its loop. A connection of another driver is left to the garbage collector.

    Never raises: this runs while a dead loop's pool is dropped, and one connection that cannot
    be closed must not keep the others open (the failure is logged; the driver modules' contract
    tests are what catch a driver release that moved an attribute).
    """
    module = type(conn).__module__.split(".", 1)[0]
    try:
        if module == "asyncpg":
            from .drivers.asyncpg import close_without_loop
        elif module == "psycopg":
            from .drivers.psycopg import close_without_loop
        elif module in ("aiomysql", "asyncmy"):
            from .drivers.mysql import close_without_loop
        elif module == "aiosqlite":
            from .drivers.sqlite import close_without_loop
        else:
            return
        close_without_loop(conn)
    except Exception:
        logger.warning("connman: could not close a %s connection whose event loop is gone; it is "
                       "left to the garbage collector", module, exc_info=True)
