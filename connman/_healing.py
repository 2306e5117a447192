"""Pools that heal by themselves: a pool whose server is down keeps trying in the background.

A pool that could not open at startup (an optional pool, a replica) and a replica that stopped
answering are *down*: they carry an `Outage` (since when, why) and a named background task
(`connman-heal-<pool>`) that tries again with a bounded, jittered backoff until the server
answers, then opens the pool (or puts the replica back in rotation). The task never blocks
startup and is cancelled when the pool closes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

__all__ = ["HEAL_TICK", "Outage", "heal", "next_delay"]

logger = logging.getLogger("connman")

HEAL_TICK = 1.0
"""Seconds: the longest wait between two attempts to reach a down server (the healing tick).
A server that answers again is used within `connect_timeout` plus this."""
FIRST_DELAY = 0.1
"""Seconds before the first retry; each failed attempt doubles the wait, up to `HEAL_TICK`."""


def next_delay(previous: float, tick: float = HEAL_TICK) -> float:
    """The wait after `previous` seconds: doubled, capped at `tick`, less up to 20 % at random
    (so that many workers' pools do not retry in step)."""
    return min(tick, previous * 2) * (1.0 - 0.2 * random.random())


def utc(at: float) -> str:
    """`time.time()` seconds as an ISO 8601 UTC timestamp to the second."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Outage:
    """Why a pool is down and since when (wall clock, `time.time()` seconds)."""

    since: float
    cause: str
    """What the last attempt met: the driver's error, passwords and URLs masked."""
    error: BaseException | None = None
    """The driver's exception of the last attempt (without its traceback), for
    `keep_driver_class`."""

    @property
    def when(self) -> str:
        """`since` as an ISO 8601 UTC timestamp."""
        return utc(self.since)

    def reason(self) -> str:
        """connman's own words, safe to show anyone: `unreachable since <time>`."""
        return f"unreachable since {self.when}"

    def report(self) -> dict[str, Any]:
        """What `Pool.probe()` returns for a pool that is down."""
        return {"status": "down", "since": self.when, "reason": self.reason(),
                "error": f"{self.reason()}: {self.cause}"}


class Healable(Protocol):
    """What `heal` needs of a pool (`connman.Pool` is one)."""

    name: str
    outage: Outage | None

    async def _try_heal(self) -> bool: ...


async def heal(pool: Healable) -> None:
    """Try to reach `pool`'s server until it answers: open a pool that never opened, or ping an
    open one that was marked down (a replica). Each attempt is bounded by `connect_timeout`."""
    delay = FIRST_DELAY
    while True:
        await asyncio.sleep(delay * (1.0 - 0.2 * random.random()))
        delay = next_delay(delay)
        outage = pool.outage
        if await pool._try_heal():
            pool.outage = None
            if outage is not None:
                logger.warning("connman: pool %r is reachable again (down since %s, %.0fs)",
                               pool.name, outage.when, time.time() - outage.since)
            return
