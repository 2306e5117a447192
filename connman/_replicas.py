"""Reads on replicas: rotation, replicas that are down or lagging, read-your-writes.

`ReplicaRouter` serves `manager.session(name, readonly=True)`: the pool's replicas round-robin,
skipping one that is down (it did not answer within `connect_timeout`; its pool keeps trying in
the background and it rejoins when it answers), one lagging beyond `max_replica_lag` (checked in
the background), and, with `read_your_writes`, one that has not replayed the last commit of this
request (or process) yet; the primary is the last resort.

With `read_your_writes="request"` the reads that follow a write in the same request go to the
primary (no round trip spent). With `"process"`, a replica serves a read once it has replayed
this process's last commit: PostgreSQL WAL positions (LSNs), `pg_current_wal_insert_lsn()` on
the primary after a commit (at or past the commit record, also for an asynchronous commit),
`pg_last_wal_replay_lsn()` on a replica. MariaDB has no such check here: `"process"` is refused
at configuration there.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from ._healing import HEAL_TICK
from .errors import CheckoutTimeout, ConnectionLost, ServerUnavailable, StatementTimeout

if TYPE_CHECKING:
    from ._pool import Pool

__all__ = ["ReplicaRouter", "parse_lsn"]

logger = logging.getLogger("connman")

PIN = 1 << 64
"""A position no replica reaches: the reads that follow go to the primary."""
POSITION_DRIVERS = ("asyncpg", "psycopg")
"""PostgreSQL drivers: WAL positions are known, so a replica that replayed a commit may serve."""

_COMMIT_POSITION = ("SELECT pg_current_wal_insert_lsn()::text, "
                    "current_setting('wal_block_size')::int, "
                    "pg_size_bytes(current_setting('wal_segment_size'))::bigint")
_REPLAY_POSITION = "SELECT pg_last_wal_replay_lsn()::text"
# Seconds behind: 0 when the replica has replayed all it received, else the age of the last
# transaction it replayed (an idle primary does not look like a lagging replica).
_REPLICA_STATUS = (
    "SELECT CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() "
    "THEN 0 ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) "
    "END::float8, pg_last_wal_replay_lsn()::text")

# Per request (context): pool name -> the position its reads must see (read_your_writes="request").
_WRITTEN: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar(
    "connman_written", default=None)


def parse_lsn(text: str | None) -> int:
    """A PostgreSQL LSN (`'16/B374D848'`) as a number; 0 for None (not a replica, or nothing
    replayed yet)."""
    if not text:
        return 0
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def record_end(lsn: int, block_size: int, segment_size: int) -> int:
    """An insert position just past a WAL page header, turned back into the page boundary.

    `pg_current_wal_insert_lsn()` points past the header of a new page when the last record ended
    exactly at a page boundary, while a replica's `pg_last_wal_replay_lsn()` is that record's
    end, the boundary itself; no record ends inside a page header, so both mean the same place.
    """
    offset = lsn % block_size
    header = 40 if lsn % segment_size < block_size else 24  # long / short page header
    return lsn - offset if offset == header else lsn


async def _fetch(conn: Any, sql: str) -> tuple[Any, ...]:
    """One row from a driver connection (asyncpg or psycopg 3)."""
    if hasattr(conn, "fetchrow"):
        row = await conn.fetchrow(sql)
    else:
        cursor = await conn.execute(sql)
        row = await cursor.fetchone()
    return tuple(row) if row is not None else ()


class ReplicaRouter:
    """Reads for one pool: its replicas round-robin, skipping those that are down or behind,
    else the primary."""

    def __init__(self, primary: Pool, replicas: list[Pool]) -> None:
        self.primary = primary
        self.replicas = replicas
        config = primary.config
        self.max_lag = config.max_replica_lag
        self.positions = config.driver_name in POSITION_DRIVERS
        mode = config.read_your_writes
        if mode == "auto":  # positions where the server gives them, else the request's pin
            mode = "process" if self.positions else "request"
        self.mode = mode
        self._next = 0
        self._process_target = 0
        self.replayed: dict[str, int] = {}
        """The last replay position seen on each replica (background check or a read)."""
        self.lag: dict[str, float] = {}
        """Seconds each replica was behind at the last background check."""
        self.lagging: set[str] = set()
        """Replicas out of rotation: more than `max_replica_lag` behind."""
        self._monitor: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ rotation
    def candidates(self) -> list[Pool]:
        """Replicas in rotation (open, not down, not lagging), round-robin, then the primary."""
        n = len(self.replicas)
        start, self._next = self._next, (self._next + 1) % max(1, n)
        order = [self.replicas[(start + i) % n] for i in range(n)]
        healthy = [p for p in order
                   if not p.closed and p.outage is None and p.name not in self.lagging]
        return [*healthy, self.primary]

    def mark_down(self, pool: Pool, error: BaseException) -> None:
        """Take `pool` out of rotation until it answers again (its pool checks in the
        background, at most `HEAL_TICK` seconds apart)."""
        if pool.outage is None:
            logger.warning("connman: replica %r did not answer (%s); reading from the others "
                           "until it does", pool.name, type(error).__name__)
        pool.go_down(error)

    def _unreachable(self, pool: Pool, exc: BaseException) -> bool:
        return isinstance(exc, (CheckoutTimeout, ServerUnavailable)) or pool.is_connection_error(
            exc)

    # ------------------------------------------------------------------ read-your-writes
    def target(self) -> int:
        """The position a read must see here: this request's (or process's) last commit."""
        if self.mode == "off":
            return 0
        if self.mode == "process":
            return self._process_target
        written = _WRITTEN.get()
        return written.get(self.primary.name, 0) if written else 0

    def _note(self, position: int) -> None:
        if self.mode == "process":
            self._process_target = max(self._process_target, position)
            return
        written = _WRITTEN.get()
        if written is None:
            written = {}
            _WRITTEN.set(written)
        written[self.primary.name] = max(written.get(self.primary.name, 0), position)

    async def _commit_position(self) -> int:
        """The primary's WAL position now (after this unit's commit), or `PIN` when it cannot
        be had at once (no free connection, not PostgreSQL, an error)."""
        primary = self.primary
        if not self.positions or primary.saturated():
            return PIN
        try:
            async with asyncio.timeout(primary.config.connect_timeout):
                async with primary.connection() as conn:
                    row = await _fetch(conn, _COMMIT_POSITION)
        except Exception as exc:
            logger.debug("connman: pool %r: commit position unknown (%s); the reads that follow "
                         "go to the primary", primary.name, type(exc).__name__)
            return PIN
        if not row or not row[0]:
            return PIN
        return record_end(parse_lsn(row[0]), int(row[1]), int(row[2]))

    async def _caught_up(self, pool: Pool, unit: Any, target: int) -> bool:
        """Whether replica `pool` has replayed `target` (asks it only when the last position
        seen is behind)."""
        if target == PIN:
            return False
        if self.replayed.get(pool.name, 0) >= target:
            return True
        from sqlalchemy import text

        replayed = parse_lsn((await unit.execute(text(_REPLAY_POSITION))).scalar())
        self.replayed[pool.name] = max(self.replayed.get(pool.name, 0), replayed)
        return replayed >= target

    @asynccontextmanager
    async def write_session(self) -> AsyncIterator[Any]:
        """A unit of work on the primary that, once committed, notes its position for the reads
        that follow (`read_your_writes`)."""
        cm = self.primary.session()
        unit = await cm.__aenter__()
        try:
            yield unit
        except BaseException as exc:
            await cm.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        in_transaction = getattr(unit, "in_transaction", None)
        wrote = (self.primary.config.commit == "manual" or in_transaction is None
                 or bool(in_transaction()))
        await cm.__aexit__(None, None, None)
        if wrote:
            # Per request the reads that follow simply go to the primary: no round trip at all.
            # Per process a pin would never lift: note the commit's position, for replicas to
            # reach.
            self._note(PIN if self.mode == "request" else await self._commit_position())

    # ------------------------------------------------------------------ reads
    @asynccontextmanager
    async def session(self) -> AsyncIterator[Any]:
        """A unit of work on the first replica in rotation that answers and is recent enough
        (or the primary)."""
        target = self.target()
        for pool in self.candidates():
            if pool is not self.primary and target == PIN:
                continue
            cm = pool.session()
            try:
                unit = await cm.__aenter__()
            except Exception as exc:
                if pool is not self.primary and self._unreachable(pool, exc):
                    self.mark_down(pool, exc)
                    continue
                raise
            if pool is not self.primary:
                try:
                    await pool.touch(unit)
                    fresh = not target or await self._caught_up(pool, unit, target)
                except BaseException as exc:
                    await cm.__aexit__(type(exc), exc, exc.__traceback__)
                    if isinstance(exc, Exception) and self._unreachable(pool, exc):
                        self.mark_down(pool, exc)
                        continue
                    raise
                if not fresh:
                    await cm.__aexit__(None, None, None)
                    continue
            try:
                yield unit
            except BaseException as exc:
                await cm.__aexit__(type(exc), exc, exc.__traceback__)
                if pool is not self.primary and isinstance(exc, Exception) and (
                        isinstance(exc, (StatementTimeout, ConnectionLost))
                        or self._unreachable(pool, exc)):
                    # Frozen or gone under this unit (its connection had skipped the pre-ping):
                    # the next reads go elsewhere until a ping gets an answer again.
                    self.mark_down(pool, exc)
                raise
            await cm.__aexit__(None, None, None)
            return

    # ------------------------------------------------------------------ background check
    def start(self) -> None:
        """Start the background lag check (`connman-replicas-<pool>`), when `max_replica_lag`
        is set on PostgreSQL."""
        if self.max_lag is None or not self.positions or self._monitor is not None:
            return
        self._monitor = asyncio.get_running_loop().create_task(
            self._watch(), name=f"connman-replicas-{self.primary.name}")

    async def stop(self) -> None:
        """Stop the background check."""
        task, self._monitor = self._monitor, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            await asyncio.gather(*(self.check(p) for p in self.replicas))
            await asyncio.sleep(HEAL_TICK)

    async def check(self, pool: Pool) -> None:
        """Read how far behind replica `pool` is; out of rotation beyond `max_replica_lag`.

        Never waits for a connection (a replica whose connections are all busy keeps its last
        state); a replica that does not answer within `connect_timeout` is marked down."""
        if pool.closed or pool.outage is not None or pool.saturated():
            return
        try:
            async with asyncio.timeout(pool.config.connect_timeout):
                async with pool.connection() as conn:
                    row = await _fetch(conn, _REPLICA_STATUS)
        except TimeoutError as exc:
            self.mark_down(pool, exc)
            return
        except Exception as exc:
            if self._unreachable(pool, exc):
                self.mark_down(pool, exc)
            else:
                logger.debug("connman: replica %r: lag check failed", pool.name, exc_info=True)
            return
        lag, replayed = float(row[0] or 0.0), parse_lsn(row[1])
        self.lag[pool.name] = lag
        self.replayed[pool.name] = max(self.replayed.get(pool.name, 0), replayed)
        behind = self.max_lag is not None and lag > self.max_lag
        if behind and pool.name not in self.lagging:
            logger.warning("connman: replica %r is %.1fs behind (max_replica_lag=%gs): out of "
                           "rotation until it catches up", pool.name, lag, self.max_lag)
            self.lagging.add(pool.name)
        elif not behind and pool.name in self.lagging:
            logger.warning("connman: replica %r caught up (%.1fs behind): back in rotation",
                           pool.name, lag)
            self.lagging.discard(pool.name)
