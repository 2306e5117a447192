"""The backend-neutral pool: a fair FIFO gate, leases, stats, events and leak detection.

Each backend subclasses `Pool` and implements the few verbs that touch its driver (`Backend`, in
`_backend.py`). Everything that must mean the same on every backend (bounded waits, fairness,
`max_waiting`, leak warnings, the stats keys) is written once here; a pool whose server is down
keeps its state in `Healing` (`_healing.py`).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import os
import random
import time
import traceback
import weakref
from collections.abc import Callable
from typing import Any

from ._backend import Backend
from ._giveback import finish as finish  # re-exported: the backends import it from here
from ._giveback import shielded as shielded  # and this one (the test binding too)
from ._healing import Healing
from ._url import redact
from .config import PoolConfig
from .errors import (
    ConnmanError,
    PoolClosed,
    PoolNotOpen,
    PoolStartupError,
    PoolTimeout,
    ServerUnavailable,
    TooManyWaiters,
    WrongEventLoop,
)
from .stats import EventHub, PoolEvent, PoolStats

logger = logging.getLogger("connman")

# Every pool of this process, so that tests can check the gate invariant on all of them.
_POOLS: weakref.WeakSet[Pool] = weakref.WeakSet()
# What pools found off the books when they closed (see `Pool.close`); read by connman.testing.
GATE_REPORTS: list[str] = []
# Who is checking out, for a leak warning: FastAPI's session dependency sets a function that
# names the route (`GET /users/{id} (handler app.views.get_user)`), called only if a leak is
# reported, since the checkout stack of a dependency ends in FastAPI's own code.
checkout_site: contextvars.ContextVar[Callable[[], str] | None] = contextvars.ContextVar(
    "connman_checkout_site", default=None)


_not_open_hint: str | None = None


def set_not_open_hint(hint: str | None) -> str | None:
    """Replace the usual reason `PoolNotOpen` gives ("the app's lifespan did not run") with `hint`
    (None: back to it); returns the previous hint. connman.testing's plugin sets it: under it, the
    lifespan question is not the one to ask."""
    global _not_open_hint
    previous, _not_open_hint = _not_open_hint, hint
    return previous


def not_open_message(name: str) -> str:
    """What `PoolNotOpen` says: the pool was never opened, and the usual reason why."""
    if _not_open_hint is not None:
        return f"pool {name!r} is not open: {_not_open_hint}"
    return (f"pool {name!r} is not open: the app's lifespan did not run, and it opens the pools "
            "(httpx.AsyncClient(transport=ASGITransport(app)) does not run it: use "
            "`with TestClient(app)`, asgi-lifespan's `LifespanManager(app)`, or "
            "`async with manager:` around the client)")


def jittered_lifetime(recycle: float, jitter: float) -> float:
    """A connection's lifetime: `recycle` shortened by up to `jitter` of it, at random.

    Like HikariCP's and psycopg_pool's, so connections opened together do not expire together.
    """
    return recycle * (1.0 - jitter * random.random())


class Lease:
    """One session's hold on a pool slot: when it began, and the leak timer if any."""

    __slots__ = ("leak_timer", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.leak_timer: asyncio.TimerHandle | None = None


class Pool(Healing, Backend):
    """A named pool of one backend; the manager, FastAPI glue, metrics and CLI speak only this."""

    backend: str = ""
    run_maintenance: bool = True
    """Whether `open()` starts the background maintenance task (trimming idle connections above
    `size`). connman.testing's plugin turns it off: tests have nothing to trim, and a suite that
    awaits every task of its loop must not wait on one that never ends."""

    def __init__(self, name: str, config: PoolConfig, hub: EventHub) -> None:
        super().__init__()  # the down/heal state (`Healing`)
        self.name = name
        self.config = config
        self.hub = hub
        self.counters = PoolStats()
        self._secrets = sorted({s for u in (config.url, *config.replicas) for s in u.secrets()},
                               key=len, reverse=True)
        self._urls = [u.get_secret_value() for u in (config.url, *config.replicas)]
        self._free = config.max_size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._nwaiting = 0
        self._active = 0
        self._opened = False
        self._was_opened = False
        self._closing = False
        self._idle_event: asyncio.Event | None = None
        self._maint_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connection_limit: int | None = None
        """Connections the server accepts for this app (read while warming up; None: unknown)."""
        self._pid: int | None = None  # the process that opened the driver pool (fork detection)
        self._tried = False  # open() was called (the lifespan ran), whatever came of it
        _POOLS.add(self)

    # ------------------------------------------------------------------ through the gate
    async def ping(self) -> float:
        """One round trip to the server through the gate; returns its latency in milliseconds.

        Waits for a slot like a session (`PoolTimeout` after `timeout`); for a health check that
        never waits, see `probe()`.
        """
        lease = await self.acquire()
        try:
            return await self._ping()
        finally:
            self.release(lease)

    async def server_info(self) -> dict[str, Any]:
        """Server version, connection limit and the connections this pool holds, server-side.

        Keys: `version`, `max_connections`, `reserved`, `server_connections` (None where the
        server does not say). Checks a connection out through the gate, like `ping()`.
        """
        lease = await self.acquire()
        try:
            return await self._server_info()
        finally:
            self.release(lease)

    # ------------------------------------------------------------------ lifecycle
    @property
    def closed(self) -> bool:
        """Whether the pool hands out no connections (not opened yet, closing or closed)."""
        return not self._opened or self._closing

    async def open(self) -> None:
        """Open the pool within `connect_timeout`; raises `PoolStartupError` naming it.

        The pool belongs to the event loop it is opened in. Opened already in a loop that has
        since closed (a test's loop, `asyncio.run`), its driver objects are dropped and it opens
        afresh here; opened in another loop that still runs, it raises `WrongEventLoop`. In a
        process forked after the pool was opened (gunicorn `--preload`, worker processes), it
        opens a driver pool of the child's own and leaves the parent's connections alone.
        """
        loop = asyncio.get_running_loop()
        if self._opened and self._pid != os.getpid():
            self._reset_after_fork()
        if self._opened:
            if self._loop is loop:
                return
            if self._loop is not None and not self._loop.is_closed():
                raise self._wrong_loop()
            self._drop()
        await self._replace_healer(loop)
        self._closing = False
        self._loop = loop
        self._tried = True
        try:
            async with asyncio.timeout(self.config.connect_timeout + 1.0):
                await self._open()
        except BaseException as exc:
            await shielded(self._close_quietly())
            if isinstance(exc, asyncio.CancelledError):
                raise
            reason = self.redact("timed out" if isinstance(exc, TimeoutError) else (
                f"{type(exc).__name__}: {exc}"))
            self._open_error = (reason, exc.with_traceback(None))
            # Only the driver's words are redacted: connman's own (pool name, masked URL) stay
            # readable whatever the password equals.
            raise PoolStartupError(
                f"pool {self.name!r} ({self.config.url.masked}) could not be opened: {reason}",
                pool=self.name,
            ) from None
        self._opened = True
        self._pid = os.getpid()
        self._was_opened = True
        self.outage = None  # opened by its healer, or by a second `open()`
        self._open_error = ("", None)
        interval = self._maintenance_interval()
        if interval is not None and self.run_maintenance:
            self._maint_task = asyncio.create_task(self._maintenance_loop(interval),
                                                   name=f"connman-maintain-{self.name}")

    def _reset_after_fork(self) -> None:
        """Forget the parent's driver pool and gate state (futures and tasks of its loop)."""
        try:
            self._forget_after_fork()
        except Exception as exc:
            raise PoolStartupError(
                f"pool {self.name!r} was opened in process {self._pid} before a fork and cannot "
                f"be reopened in process {os.getpid()}: {type(exc).__name__}; open the pools in "
                "each worker (the app's lifespan), not before forking", pool=self.name) from None
        self._opened = self._closing = False
        self._free = self.config.max_size
        self._waiters.clear()
        self._nwaiting = self._active = 0
        self._idle_event = None
        self._maint_task = None
        self._forget_healing()
        self._loop = None

    async def _close_quietly(self) -> None:
        try:
            await self._close()
        except Exception:
            logger.warning("connman: pool %r: error while closing", self.name, exc_info=False)

    def _wrong_loop(self) -> WrongEventLoop:
        return WrongEventLoop(
            f"pool {self.name!r} was opened in another event loop and can only be used there; "
            "open the pools in the loop that uses them (run the app's lifespan per test client, "
            "or give session-scoped fixtures and tests the same loop)", pool=self.name)

    def _drop(self) -> None:
        """Forget the driver objects of a loop that is gone, closing what can be closed at once."""
        try:
            self._drop_driver()
        except Exception:
            logger.debug("connman: pool %r: dropping the driver objects failed", self.name,
                         exc_info=True)
        self._maint_task = None
        self._forget_healing()
        self._waiters.clear()
        self._nwaiting = 0
        self._active = 0
        self._free = self.config.max_size
        self._opened = False
        self._closing = False

    async def close(self, drain_timeout: float | None = None) -> None:
        """Refuse new sessions, wait up to `drain_timeout` for held ones, then dispose the pool.

        After the pool's event loop closed, the driver objects are dropped without waiting on
        them (their sockets closed directly). From another thread while the pool's loop runs,
        the close runs in that loop. From another loop while the pool's loop exists but is not
        running, raises `WrongEventLoop`: close it in its own loop. A pool that is down stops
        trying to reach its server.
        """
        await self._end_healing()
        if not self._opened:
            self.outage = None
            return
        if self._pid != os.getpid():  # the parent's pool: not ours to close
            self._reset_after_fork()
            return
        if self._loop is not asyncio.get_running_loop():
            loop = self._loop
            if loop is not None and loop.is_running() and not loop.is_closed():
                # Still served by another thread: close it there.
                future = asyncio.run_coroutine_threadsafe(self.close(drain_timeout), loop)
                await asyncio.wrap_future(future)
                return
            if loop is not None and not loop.is_closed():
                raise self._wrong_loop()  # its loop may run again: close it there
            self._drop()
            return
        self._closing = True
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(PoolClosed(f"pool {self.name!r} is closing", pool=self.name))
        deadline = self.config.drain_timeout if drain_timeout is None else drain_timeout
        if self._active:
            self._idle_event = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle_event.wait(), deadline)
            except TimeoutError:
                logger.warning("connman: pool %r: %d session(s) still active after %.1fs drain; "
                               "disposing anyway", self.name, self._active, deadline)
        if self._maint_task is not None:
            self._maint_task.cancel()
            await asyncio.gather(self._maint_task, return_exceptions=True)
            self._maint_task = None
        escaped = self.off_books()
        if escaped:
            report = (f"pool {self.name!r}: {escaped} connection(s) checked out past the gate "
                      "at close")
            GATE_REPORTS.append(report)
            logger.warning("connman: %s", report)
        await shielded(self._close_quietly())
        self._opened = False
        self._closing = False

    async def _maintenance_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self._maintain()
            except Exception:
                logger.debug("connman: pool %r: maintenance failed", self.name, exc_info=True)

    # ------------------------------------------------------------------ the gate
    async def acquire(self) -> Lease:
        """Wait for a slot in arrival order; raises `PoolTimeout`, `TooManyWaiters`, `PoolClosed`.

        Raises `WrongEventLoop` when called from another event loop than the pool was opened in,
        `PoolNotOpen` in a process forked after the pool was opened, until it opens it.
        """
        if self._pid is not None and self._pid != os.getpid():
            raise PoolNotOpen(f"pool {self.name!r} was opened in process {self._pid}, before this "
                              "process forked: open it here (the app's lifespan)", pool=self.name)
        if self._closing or not self._opened:
            self.counters.bump("requests_errors")
            refusal = self._refusal()
            if isinstance(refusal, ServerUnavailable):
                self.counters.bump("requests_unavailable")
            raise refusal
        if self._loop is not asyncio.get_running_loop():
            raise self._wrong_loop()
        if self._free > 0 and not self._nwaiting:
            self._free -= 1
            return self._grant(0.0, queued=False)
        cfg = self.config
        if cfg.max_waiting and self._nwaiting >= cfg.max_waiting:
            self.counters.bump("requests_rejected")
            self.counters.bump("requests_errors")
            self._emit("rejected")
            raise TooManyWaiters(
                f"pool {self.name!r}: {self._nwaiting} requests already wait "
                f"(max_waiting={cfg.max_waiting})", pool=self.name, retry_after=cfg.retry_after_s)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._nwaiting += 1
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(cfg.timeout):
                await fut
        except TimeoutError:
            self._abandon(fut)
            waited = (time.monotonic() - t0) * 1000
            self.counters.bump("requests_timeouts")
            self.counters.bump("requests_errors")
            self.counters.bump("requests_wait_ms", waited)
            self._emit("timeout", waited)
            raise PoolTimeout(
                f"pool {self.name!r}: no connection free after {cfg.timeout:g}s "
                f"({self._active} in use of {cfg.max_size}, {self._nwaiting} waiting)",
                pool=self.name, retry_after=cfg.retry_after_s) from None
        except BaseException:
            self._abandon(fut)
            raise
        finally:
            self._nwaiting -= 1
        return self._grant((time.monotonic() - t0) * 1000, queued=True)

    def _refusal(self) -> ConnmanError:
        """Why a closed pool refuses: its server is down (`ServerUnavailable`, since when and why),
        never opened (`PoolNotOpen`: the lifespan did not run), closing or closed."""
        down = self._down_refusal()
        if down is not None:
            return down
        if not self._was_opened and not self._tried:
            return PoolNotOpen(not_open_message(self.name), pool=self.name)
        state = "closing" if self._closing else "closed"
        return PoolClosed(f"pool {self.name!r} is {state}: the app is shutting down", pool=self.name)

    def _abandon(self, fut: asyncio.Future[None]) -> None:
        # A permit handed over just as the wait ended (timeout or cancel) is passed on, not lost.
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            self._pass_on()
        elif not fut.done():
            fut.cancel()

    def _grant(self, waited_ms: float, *, queued: bool) -> Lease:
        self._active += 1
        c = self.counters
        c.bump("requests_num")
        if queued:
            c.bump("requests_queued")
            c.bump("requests_wait_ms", waited_ms)
        lease = Lease(time.monotonic())
        if self.config.leak_threshold is not None:
            stack = "".join(traceback.format_stack(limit=12)[:-3])
            lease.leak_timer = asyncio.get_running_loop().call_later(
                self.config.leak_threshold, self._leaked, lease, stack, checkout_site.get())
        if self.hub.active:
            self._emit("checkout", waited_ms)
        return lease

    def release(self, lease: Lease) -> None:
        """Give a lease back; the slot goes to the longest waiter first. Never awaits."""
        held = (time.monotonic() - lease.start) * 1000
        if lease.leak_timer is not None:
            lease.leak_timer.cancel()
        self.counters.bump("usage_ms", held)
        if self.hub.active:
            self._emit("checkin", held)
        self._unreserve()

    def _pass_on(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self._free += 1

    def _reserve(self) -> bool:
        """Take a free slot for housekeeping (closing a surplus connection), never making anyone
        wait: only when a slot is free and nobody waits. Like `probe`, it is on the books
        (`requests_active`) while held, without counting as a request.

        While the slot is held, the connection being closed still counts against `size +
        overflow`, so a burst arriving meanwhile cannot open one more than the maximum.
        """
        if self._closing or self.saturated():
            return False
        self._free -= 1
        self._active += 1
        return True

    def _unreserve(self) -> None:
        """Give back a slot (`_reserve`, `probe`, or a lease's in `release`); the longest waiter
        gets it first."""
        self._active -= 1
        self._pass_on()
        if self._idle_event is not None and self._active == 0:
            self._idle_event.set()

    def saturated(self) -> bool:
        """Whether a new checkout would have to wait: no free slot (no I/O)."""
        return self._free <= 0 or self._nwaiting > 0

    async def probe(self, timeout: float) -> dict[str, Any]:
        """A health check that never queues behind sessions.

        Returns `{"status": "up", "ping_ms": ...}` after one round trip on a free connection
        (bounded by `timeout` seconds); `{"status": "busy", "saturated": True}` without I/O when
        every connection is in use (the sessions holding them are the evidence that it works);
        or `{"status": "down", "reason": ..., "error": ...}`: `reason` in connman's own words
        (safe to show anyone: "unreachable since <UTC time>", "no answer within 2s"), `error`
        with the driver's (masked), and `since` (UTC) when the pool knows since when. The probe
        takes a free slot of the gate like any checkout, without counting as a request.
        """
        if self.outage is not None:
            return self.outage.report()
        if not self._opened or self._closing:
            refusal = self._refusal()
            reason = ("not open: the app's lifespan did not run"
                      if isinstance(refusal, PoolNotOpen) else "closed")
            return {"status": "down", "reason": reason, "error": str(refusal)}
        if self._loop is not asyncio.get_running_loop():
            return {"status": "down", "reason": "opened in another event loop",
                    "error": str(self._wrong_loop())}
        if not self._reserve():
            return {"status": "busy", "saturated": True}
        try:
            async with asyncio.timeout(timeout):
                ms = await self._ping()
        except TimeoutError:
            said = f"no answer within {timeout:g}s"
            return self._probe_failed(said, f"{said} from the server")
        except Exception as exc:
            return self._probe_failed(f"ping failed ({type(exc).__name__})",
                                      self.redact(f"{type(exc).__name__}: {exc}")[:300])
        finally:
            self._unreserve()
        self._probe_down_since = None
        return {"status": "up", "ping_ms": round(ms, 3)}

    def _leaked(self, lease: Lease, stack: str, site: Callable[[], str] | None) -> None:
        self.counters.bump("leaks_detected")
        held = time.monotonic() - lease.start
        self._emit("leak", held * 1000)
        by = f" by {site()}" if site is not None else ""
        logger.warning("connman: pool %r: connection held for %.1fs (leak_threshold=%gs)%s; "
                       "checked out at:\n%s", self.name, held, self.config.leak_threshold, by,
                       stack)

    # ------------------------------------------------------------------ sessions
    def session(self) -> Leased:
        """A unit of work on one pooled connection; see the backend for commit/rollback."""
        return Leased(self, raw=False)

    def connection(self) -> Leased:
        """The driver's raw connection from this pool; limits, stats and lifetimes apply."""
        return Leased(self, raw=True)

    # ------------------------------------------------------------------ stats and events
    def _emit(self, name: str, duration_ms: float = 0.0, reason: str = "") -> None:
        if self.hub.active:
            self.hub.emit(PoolEvent(self.name, name, self.backend, duration_ms, reason))

    def connection_event(self, name: str, duration_ms: float = 0.0, reason: str = "") -> None:
        """Count and emit one driver-level event (connect, close, lost, recycle, idle_close)."""
        key = {"lost": "connections_lost", "recycle": "connections_recycled",
               "idle_close": "connections_idle_closed"}.get(name)
        if key:
            self.counters.add(key)
        if name in ("lost", "recycle", "idle_close", "close"):
            self.counters.add("connections_closed")
        self._emit(name, duration_ms, reason)

    def stats(self) -> dict[str, int]:
        """Gauges and counters with the stable keys of `connman.stats.STAT_KEYS`."""
        size, available = self._gauges() if self._opened else (0, 0)
        out = {
            "pool_min": self.config.size,
            "pool_max": self.config.max_size,
            "pool_size": size,
            "pool_available": available,
            "requests_active": self._active,
            "requests_waiting": self._nwaiting,
        }
        out.update(self.counters.snapshot())
        return out

    def pop_stats(self) -> dict[str, int]:
        """Like `stats()`, then reset the counters."""
        out = self.stats()
        self.counters.pop()
        return out

    def redact(self, text: str) -> str:
        """`text` with URLs masked structurally and this pool's secrets replaced by *** elsewhere."""
        return redact(text, self._secrets, self._urls)

    def state(self) -> str:
        """One line of state, httpcore style."""
        size, available = self._gauges() if self._opened else (0, 0)
        status = "closing" if self._closing else ("open" if self._opened else "closed")
        if self.outage is not None and not self._closing:
            status += f", down since {self.outage.when}"  # trying again in the background
        return (f"{self.name} {self.backend}/{self.config.driver_name} {self.config.url.masked} "
                f"{status} [Requests: {self._active} active, {self._nwaiting} waiting | "
                f"Connections: {size} open, {available} idle, max {self.config.max_size}]")

    def __repr__(self) -> str:
        return f"<Pool {self.state()}>"


class Leased:
    """`async with pool.session()`: a lease on a slot plus the backend's unit of work.

    A plain class rather than an async generator: it is on every request's path, and generator-based
    context managers cost two extra layers per request.
    """

    __slots__ = ("handle", "lease", "pool", "raw")

    def __init__(self, pool: Pool, *, raw: bool) -> None:
        self.pool = pool
        self.raw = raw
        self.lease: Lease | None = None
        self.handle: Any = None

    async def __aenter__(self) -> Any:
        pool = self.pool
        lease = await pool.acquire()
        try:
            if self.raw:
                self.handle, unit = await pool._begin_raw()
            else:
                self.handle = unit = await pool._begin()
        except BaseException:
            pool.release(lease)
            raise
        self.lease = lease
        return unit

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        pool, lease = self.pool, self.lease
        assert lease is not None
        try:
            if self.raw:
                await pool._end_raw(self.handle, exc)
            else:
                await pool._end(self.handle, exc)
        finally:
            self.handle = self.lease = None
            pool.release(lease)
