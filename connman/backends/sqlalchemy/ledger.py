"""connman's one ledger of a SQL pool's connections: `LedgerPool`, a `sqlalchemy.pool.Pool`.

SQLAlchemy's extension point for pools is a `Pool` subclass with `_do_get` / `_do_return_conn`
(its `NullPool` is ten lines). connman's keeps exactly one list of the pool's connections, as
psycopg_pool and asyncpg's pool do: the idle ones on a LIFO stack, the checked-out ones in a set.
Sessions check out through SQLAlchemy (`_do_get`, with its events and pre-ping) and the fast path
takes the same records directly (`take_idle`, no greenlet hop); both give them back to the same
stack. What used to keep three views in agreement (SQLAlchemy's queue, the fast path's own stack,
the gate's counters: making room, trimming, off-the-books counts, a disposed pool's late returns)
is gone with the second and third lists.

**Admitted only through the gate.** Every checkout is counted against the slots connman's gate
has handed out (`Gate.admitted()`): a session or fast-path unit holds one, so its checkout is
covered; a checkout nobody holds a slot for (`manager.native(name).connect()`, a migration at
startup) first takes a lease of its own from the gate (`Gate.acquire()`: it waits in the same
FIFO queue, with the same `timeout`) and gives it back when its connection comes back. So the
number of connections out never exceeds the slots held: "nothing gets past the gate" is a
property of this list, not something a test checks afterwards.

**The lifetime rules** (recycle with jitter, `idle`, a read-only server's connections, the pool
invalidated after a disconnect, the pre-ping bypass window) are `Lifetime`, asked at a session's
checkout (SQLAlchemy's `checkout` event) and at a fast-path checkout alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy.pool import Pool
from sqlalchemy.util import await_only

from .probes import ALIVE_BYPASS_S

logger = logging.getLogger("connman")


class Gate(Protocol):
    """What the ledger asks connman's gate (`SQLAlchemyPool`)."""

    name: str

    def admitted(self) -> int:
        """How many connections may be checked out now: the gate's slots held (leases and
        housekeeping reserves), plus the test binding's outer connection."""

    async def acquire(self) -> Any:
        """A lease of the gate's own (FIFO wait, `timeout`), for a checkout no unit holds a slot
        for; raises what the gate raises (`PoolTimeout`, `PoolClosed`, ...)."""

    def release(self, lease: Any) -> None:
        """Give such a lease back."""


class Lifetime:
    """The lifetime rules of a pool's connections, in one place (asked without I/O).

    `recycle`: a record's `info["cm_deadline"]` (set at connect: `recycle` with jitter);
    `idle`: seconds since its `info["cm_in"]` (set when it came back); `stale(info)`: opened no
    later than a connection whose server refused a write as read-only; and the pool's invalidation
    after a disconnect (SQLAlchemy's `Pool._invalidate_time`, wall clock, against the record's
    `starttime`).
    """

    __slots__ = ("idle", "pre_ping", "stale")

    def __init__(self, idle: float | None, pre_ping: bool,
                 stale: Callable[[Any], bool]) -> None:
        self.idle = idle
        self.pre_ping = pre_ping
        self.stale = stale

    def expired(self, rec: Any, now: float, invalidated: float = 0.0) -> str | None:
        """Why the record's connection must not be handed out (a counted close reason: "lost",
        "recycle", "idle_close"), or None. `now`: `time.monotonic()`; `invalidated`: the pool's
        last invalidation (`time.time()`, 0 for none)."""
        info = rec.info
        if self.stale(info) or invalidated > rec.starttime:
            return "lost"
        deadline = info.get("cm_deadline")
        if deadline is not None and now >= deadline:
            return "recycle"
        last_in = info.get("cm_in")
        if self.idle is not None and last_in is not None and now - last_in > self.idle:
            return "idle_close"
        return None

    def needs_ping(self, last_in: float | None, now: float) -> bool:
        """Whether a connection last checked in at `last_in` (monotonic) is pinged before use:
        `pre_ping` on, and not used within `ALIVE_BYPASS_S` (HikariCP's aliveBypassWindowMs)."""
        return self.pre_ping and (last_in is None or now - last_in >= ALIVE_BYPASS_S)


class LedgerPool(Pool):
    """A SQLAlchemy pool whose connections connman keeps in one list (see the module).

    Takes SQLAlchemy's pool keywords: `pool_size + max_overflow` is the most connections it ever
    holds (connman passes `size + overflow` and 0; connman's maintenance closes those above
    `size`); `timeout` is kept for `timeout()` only (the gate bounds every wait); `use_lifo` is
    accepted and ignored (always LIFO: a light load reuses the same few connections, so the
    surplus stays idle long enough to be closed).
    """

    # Log where SQLAlchemy's own pool logs, so logging configured for it still applies.
    _sqla_logger_namespace = "sqlalchemy.pool.impl.AsyncAdaptedQueuePool"

    gate: Gate | None = None
    """connman's gate; None only between the engine's creation and `SQLAlchemyPool._open`."""
    lifetime: Lifetime | None = None
    setup_expired: Callable[[BaseException, int], Exception | None] | None = None
    """(the error, setup kills before the checkout) -> the error to raise (`CheckoutTimeout`
    for a connection whose setup connman's deadline killed, `ServerUnavailable` for a refused
    one), or None to raise it as it is."""

    def __init__(self, creator: Any, pool_size: int = 5, max_overflow: int = 0,
                 timeout: float = 30.0, use_lifo: bool = True, **kw: Any) -> None:
        super().__init__(creator, **kw)
        self._size = pool_size
        self._max_overflow = max_overflow
        self._max = pool_size + max(0, max_overflow)
        self._timeout = timeout
        self.idle: list[Any] = []
        """Idle records, the most recently returned last (LIFO)."""
        self.out: set[Any] = set()
        """Records checked out (by a session or the fast path)."""
        self._leases: dict[Any, Any] = {}
        """The gate leases taken for checkouts no unit held a slot for, by record."""
        self._opening = 0
        """Connections being opened for a checkout (counted as out)."""
        self._retiring = 0
        """Connections taken off the idle stack to be closed (still open, still counted)."""
        self.recent: dict[int, float] = {}
        """When each open DBAPI connection (by id) last came back (`time.monotonic()`): the
        pre-ping bypass window."""
        self.setup_kills = 0
        """Setups connman's deadline killed so far."""
        self.disposed = False

    # ------------------------------------------------------------------ counts
    def claims(self) -> int:
        """Connections checked out or being opened for a checkout."""
        return len(self.out) + self._opening

    def open_count(self) -> int:
        """Connections open now (or being opened): idle, checked out, being closed."""
        return len(self.idle) + self.claims() + self._retiring

    def _covered(self) -> bool:
        gate = self.gate
        return gate is None or self.claims() < gate.admitted()

    def _require_slot(self) -> None:
        if not self._covered():
            raise RuntimeError(f"pool {self._name()!r}: a checkout without a gate slot")

    def _room(self) -> None:
        if self.open_count() >= self._max:
            raise RuntimeError(
                f"pool {self._name()!r}: no room for another connection ({self._max} open): a "
                "connman bug (the gate admits no more checkouts than there are connections)")

    def _name(self) -> str:
        return self.gate.name if self.gate is not None else "?"

    # ------------------------------------------------------------------ SQLAlchemy's interface
    def connect(self) -> Any:
        """Check a connection out (see `sqlalchemy.pool.Pool.connect`); a connection whose setup
        failed raises connman's typed error (`setup_expired`)."""
        return self._typed_setup(super().connect)

    def _typed_setup(self, step: Callable[[], Any]) -> Any:
        """Run a checkout step that may open a connection; a failed setup raises connman's typed
        error (`setup_expired`), anything else as it is."""
        kills = self.setup_kills
        try:
            return step()
        except Exception as exc:
            translate = self.setup_expired
            replacement = translate(exc, kills) if translate is not None else None
            if replacement is None:
                raise
            raise replacement from exc

    def _do_get(self) -> Any:
        lease = None
        if not self._covered():
            # Nobody holds a slot for this checkout: take one, in the gate's queue (runs inside
            # SQLAlchemy's greenlet, as AsyncAdaptedQueuePool awaits its queue).
            assert self.gate is not None
            lease = await_only(self.gate.acquire())
        try:
            rec = self.idle.pop() if self.idle else self._open_record()
        except BaseException:
            if lease is not None:
                self.gate.release(lease)  # type: ignore[union-attr]
            raise
        self.out.add(rec)
        if lease is not None:
            self._leases[rec] = lease
        return rec

    def _open_record(self) -> Any:
        self._room()
        self._opening += 1
        try:
            return self._create_connection()
        finally:
            self._opening -= 1

    def _do_return_conn(self, record: Any) -> None:
        self.out.discard(record)
        lease = self._leases.pop(record, None)
        try:
            dbapi = record.dbapi_connection
            if dbapi is None:
                return  # invalidated: the record is forgotten (a new one is opened when needed)
            if self.disposed:
                record.close()  # came back after the pool closed
                return
            now = record.info["cm_in"] = time.monotonic()
            self.recent[id(dbapi)] = now
            self.idle.append(record)
        finally:
            if lease is not None and self.gate is not None:
                self.gate.release(lease)

    def dispose(self) -> None:
        """Close the idle connections; those checked out are closed when they come back."""
        self.disposed = True
        while self.idle:
            self.idle.pop().close()
        self.logger.info("Pool disposed. %s", self.status())

    def recreate(self) -> LedgerPool:
        """A new, empty ledger with the same settings (SQLAlchemy's `engine.dispose()`)."""
        self.logger.info("Pool recreating")
        pool = self.__class__(
            self._creator, pool_size=self._size, max_overflow=self._max_overflow,
            timeout=self._timeout, recycle=self._recycle, echo=self.echo,
            logging_name=self._orig_logging_name, reset_on_return=self._reset_on_return,
            pre_ping=self._pre_ping, _dispatch=self.dispatch, dialect=self._dialect)
        pool.gate, pool.lifetime, pool.setup_expired = self.gate, self.lifetime, self.setup_expired
        return pool

    def status(self) -> str:
        """SQLAlchemy's one-line summary of the pool."""
        return (f"Pool size: {self._size}  Connections in pool: {len(self.idle)} "
                f"Current Overflow: {self.overflow()} Current Checked out connections: "
                f"{self.claims()}")

    def size(self) -> int:
        """`pool_size`: connman's `size + overflow`."""
        return self._size

    def timeout(self) -> float:
        """`pool_timeout` as configured (seconds); unused: the gate bounds the wait."""
        return self._timeout

    def checkedin(self) -> int:
        """Idle connections."""
        return len(self.idle)

    def checkedout(self) -> int:
        """Connections checked out (or being opened for a checkout)."""
        return self.claims()

    def overflow(self) -> int:
        """Connections open beyond `pool_size` (negative: room left)."""
        return self.open_count() - self._size

    # ------------------------------------------------------------------ the fast path's interface
    def take_idle(self) -> Any:
        """The most recently returned idle record, checked out (None if none is idle). No I/O,
        no greenlet: for a caller that holds a gate slot (raises `RuntimeError` otherwise)."""
        if not self.idle:
            return None
        self._require_slot()
        rec = self.idle.pop()
        self.out.add(rec)
        return rec

    def open_new(self) -> Any:
        """Open a connection for a caller that holds a gate slot and found none idle, checked
        out. Runs in SQLAlchemy's greenlet (`greenlet_spawn`): the dialect's connect events."""
        self._require_slot()
        rec = self._typed_setup(self._open_record)
        self.out.add(rec)
        return rec

    def give_back(self, rec: Any) -> None:
        """A fast-path record comes back (its connection is open and reset, or it was
        invalidated): as SQLAlchemy's checkin does, without its events and reset. Outside
        SQLAlchemy's greenlet, so once the pool is disposed its connection is dropped without a
        round trip (`invalidate`) rather than closed."""
        if self.disposed and rec.dbapi_connection is not None:
            rec.info["cm_reason"] = "close"
            rec.invalidate()
        self._do_return_conn(rec)

    def invalidate_older(self) -> None:
        """Every connection opened before now is replaced at its next checkout, as SQLAlchemy
        does after a disconnect (its `Pool._invalidate_time`, which `_ConnectionRecord` reads)."""
        self._invalidate_time = time.time()

    def invalidated(self) -> float:
        """When the pool was last invalidated (`time.time()`; 0 for never)."""
        return float(self._invalidate_time)

    # ------------------------------------------------------------------ maintenance
    def retire_oldest(self, idle_for: float, now: float) -> Any:
        """Take the oldest idle record off the stack to be closed, if it has been idle for
        `idle_for` seconds (None otherwise). It stays counted as open until `retired()`."""
        if not self.idle:
            return None
        rec = self.idle[0]
        since = rec.info.get("cm_in")
        if since is None or now - since < idle_for:
            return None
        self.idle.pop(0)
        self._retiring += 1
        return rec

    def retired(self) -> None:
        """A record `retire_oldest` gave is closed."""
        self._retiring -= 1

    def drop_all(self) -> list[Any]:
        """Forget every idle connection without closing it (its event loop is gone): their DBAPI
        connections, for the caller to close at the socket."""
        conns = []
        for rec in self.idle:
            if rec.dbapi_connection is not None:
                conns.append(rec.dbapi_connection)
                rec.dbapi_connection = None
        self.idle.clear()
        self.disposed = True
        return conns
