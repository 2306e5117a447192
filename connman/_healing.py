"""Pools that heal by themselves: a pool whose server is down keeps trying in the background.

A pool that could not open at startup (an optional pool, a replica) and a replica that stopped
answering are *down*: they carry an `Outage` (since when, why) and a named background task
(`connman-heal-<pool>`) that tries again with a bounded, jittered backoff until the server
answers, then opens the pool (or puts the replica back in rotation). The task never blocks
startup and is cancelled when the pool closes.

`Healing` is that state and its verbs, mixed into `connman.Pool`, so that `_pool.py` holds the gate
and its lifecycle only; `heal` is the task.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from .errors import (
    ConnmanError,
    PoolStartupError,
    ServerUnavailable,
    WrongEventLoop,
    keep_driver_class,
)

if TYPE_CHECKING:
    from .config import PoolConfig

__all__ = ["HEAL_TICK", "Healing", "Outage", "heal", "next_delay"]

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


class Healing(abc.ABC):
    """The down/heal state of a pool, mixed into `connman.Pool`: its `Outage`, the heal task,
    the refusal a down pool gives, and since when its probes fail."""

    # What this needs of its pool (`connman.Pool` provides it).
    name: str
    config: PoolConfig
    _opened: bool
    _closing: bool

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def _ping(self) -> float: ...

    @abc.abstractmethod
    def _reserve(self) -> bool: ...

    @abc.abstractmethod
    def _unreserve(self) -> None: ...

    @abc.abstractmethod
    def redact(self, text: str) -> str: ...

    def __init__(self) -> None:
        self.outage: Outage | None = None
        """Set while the pool's server is down and a background task tries again (`heal`)."""
        self._heal_task: asyncio.Task[None] | None = None
        self._probe_down_since: float | None = None  # first failed probe of an open pool
        self._open_error: tuple[str, BaseException | None] = ("", None)

    def go_down(self, error: BaseException) -> None:
        """Mark the pool down since now (or since it first was) for `error`, and keep trying to
        reach its server in the background (`connman-heal-<name>`) until it answers.

        A pool that never opened (its `open()` raised) opens when its server answers; until then
        its requests get `ServerUnavailable(kind="down")`. An open pool (a replica that stopped
        answering) is put back in rotation by its router once a ping succeeds.
        """
        if isinstance(error, PoolStartupError) and self._open_error[0]:
            cause, driver_error = self._open_error
        else:
            cause = self.redact(f"{type(error).__name__}: {error}")[:300]
            driver_error = error.__cause__ if isinstance(error, ConnmanError) else error
        if type(driver_error) is TimeoutError:
            driver_error = None  # connman's own bound on the attempt, not the driver's error
        if driver_error is not None:
            driver_error = driver_error.with_traceback(None)
        if self.outage is None:
            self.outage = Outage(time.time(), cause, driver_error)
        else:
            self.outage.cause, self.outage.error = cause, driver_error
        if self._heal_task is None or self._heal_task.done():
            self._heal_task = asyncio.get_running_loop().create_task(
                heal(self), name=f"connman-heal-{self.name}")

    async def _try_heal(self) -> bool:
        """One attempt to reach the server of a down pool (see `go_down`); True once it answers."""
        if self._opened and self.outage is None:
            return True  # opened meanwhile by another `open()`
        if not self._opened:
            try:
                await self.open()
            except (PoolStartupError, WrongEventLoop) as exc:
                self.go_down(exc)
                return False
            return True
        if not self._reserve():
            return False  # every slot is held: no evidence either way, try again later
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                await self._ping()
        except TimeoutError:
            self.outage_cause(f"no answer within connect_timeout={self.config.connect_timeout:g}s")
            return False
        except Exception as exc:
            self.outage_cause(self.redact(f"{type(exc).__name__}: {exc}")[:300])
            return False
        finally:
            self._unreserve()
        return True

    def outage_cause(self, cause: str) -> None:
        """Update what the current outage's last attempt met (no-op when the pool is up)."""
        if self.outage is not None:
            self.outage.cause = cause

    def _down_refusal(self) -> ConnmanError | None:
        """`ServerUnavailable(kind="down")` for a request while the server is down (since when
        and why, with the driver's class), or None when it is not down or the pool is closing."""
        outage = self.outage
        if outage is not None and not self._closing:
            error = ServerUnavailable(
                f"pool {self.name!r} ({self.config.url.masked}) is {outage.reason()}: "
                f"{outage.cause}; connman keeps trying in the background", pool=self.name,
                kind="down", retry_after=self.config.retry_after_s, since=outage.since)
            return error if outage.error is None else keep_driver_class(error, outage.error)
        return None

    def _probe_failed(self, reason: str, error: str) -> dict[str, Any]:
        """A probe of an open pool failed: down since the first failed probe in a row."""
        if self._probe_down_since is None:
            self._probe_down_since = time.time()
        return {"status": "down", "since": utc(self._probe_down_since), "reason": reason,
                "error": error}

    async def _replace_healer(self, loop: asyncio.AbstractEventLoop) -> None:
        """Before an `open()` in `loop`: the healer's attempt in flight there is cancelled (one
        attempt at a time: this one replaces it), unless it is the caller."""
        healer = self._heal_task
        if healer is not None and healer is not asyncio.current_task() and not healer.done():
            if healer.get_loop() is loop:
                healer.cancel()
                await asyncio.gather(healer, return_exceptions=True)
            self._heal_task = None

    async def _end_healing(self) -> None:
        """At `close()`: stop trying to reach the server, in the heal task's own loop."""
        healer = self._heal_task
        if healer is not None:
            home = healer.get_loop()
            if home is asyncio.get_running_loop():
                await self._stop_healing()
            elif home.is_running() and not home.is_closed():
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
                    self._stop_healing(), home))
            else:
                self._heal_task = None

    async def _stop_healing(self) -> None:
        task, self._heal_task = self._heal_task, None
        self.outage = None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _forget_healing(self) -> None:
        """Drop the heal state without I/O: its loop is gone, or it is a parent process's."""
        self._heal_task = None
        self.outage = None
