"""Units of work on sessions: an `AsyncSession` begun for a request and ended once (commit
policy, close with a deadline, a connection discarded when close() could not end it, typed errors
and `ConcurrentUse` for two tasks on one session)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession

from ..._pool import finish
from ...errors import ConcurrentUse, ConnectionLost
from .. import _outage
from .._guard import EndedBind
from .state import PoolState

logger = logging.getLogger("connman")


def _is_concurrency_error(exc: BaseException) -> bool:
    """SQLAlchemy's own word that two tasks used one session at once."""
    return isinstance(exc, sa_exc.IllegalStateChangeError) or (
        isinstance(exc, sa_exc.InvalidRequestError) and getattr(exc, "code", None) == "isce")


def _changing(session: Any) -> bool:
    """Whether a task is inside a state change of this (sync) session now, such as checking a
    connection out for it: SQLAlchemy's `_StateChange` marks that on each transaction."""
    trans = session._transaction
    while trans is not None:
        if getattr(trans._next_state, "name", "") == "CHANGE_IN_PROGRESS":
            return True
        trans = trans.parent
    return False


def _session_connections(session: Any) -> list[Any]:
    """The SQLAlchemy `Connection`s a (sync) session holds, whatever state it is in."""
    trans = session.get_transaction()  # the root transaction, or None
    if trans is None:
        return []
    seen: dict[int, Any] = {}
    for entry in list(trans._connections.values()):
        seen.setdefault(id(entry[0]), entry[0])
    return list(seen.values())


_OPTIMIZED = inspect.CO_OPTIMIZED
_CLEARABLE = (inspect.CO_OPTIMIZED | inspect.CO_GENERATOR | inspect.CO_COROUTINE
              | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE)


def _release_frames(error: BaseException) -> None:
    """Drop the locals of the finished frames a cancellation passed through.

    sqlite3's close() leaves the file open while a statement of the connection is alive, and the
    cursor of a query cut short by the cancel is held by those frames, in a reference cycle with
    the exception: without this, the handle stays open until the garbage collector runs.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    while todo:
        exc = todo.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        todo += [e for e in (exc.__context__, exc.__cause__) if e is not None]
        tb = exc.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            # Only finished plain functions: never a module's namespace, never a suspended
            # generator or coroutine (clearing one would finalize it).
            if frame.f_code.co_flags & _CLEARABLE == _OPTIMIZED:
                with contextlib.suppress(RuntimeError):  # still executing
                    frame.clear()
            tb = tb.tb_next


class UnitsMixin(PoolState):
    """`SQLAlchemyPool`'s units of work on sessions (`manager.session()`)."""

    # ------------------------------------------------------------------ sessions
    async def _begin(self) -> AsyncSession:
        if self._binding is not None:  # connman.testing: join the test's outer transaction
            return await self._binding.begin()
        assert self._sessionmaker is not None
        if self._committed:
            self._committed.discard(asyncio.current_task())  # type: ignore[arg-type]
        return self._sessionmaker()

    async def _end(self, session: AsyncSession, error: BaseException | None) -> None:
        if self._binding is not None:  # connman.testing
            return await self._binding.end(session, error)
        if error is not None:
            self._typed_end(error)
        try:
            clean = await self._close_unit(session, error)
        except BaseException as exc:
            self._reclaim_stranded()
            if exc is not error:
                self._typed_end(exc)
            raise
        if not clean or error is not None:
            self._reclaim_stranded()

    def _typed_end(self, error: BaseException) -> None:
        """Count a unit that ended in a typed server failure; a connection lost after the unit
        sent a COMMIT may have applied something: no `Retry-After` then."""
        if isinstance(error, ConnectionLost) and error.retry_after is not None:
            task = asyncio.current_task()
            if task is not None and task in self._committed:
                error.retry_after = None
        _outage.count(self, error)

    async def _close_unit(self, session: AsyncSession, error: BaseException | None) -> bool:
        """Commit (`commit="auto"`) and close a session; its connections go back or are discarded.

        Returns False when closing was interrupted or abandoned (see `finish`)."""
        clean = True
        if isinstance(error, ConcurrentUse):
            # Another task may still be running a statement on this session's connection:
            # discard it (which interrupts that statement) rather than give it back busy.
            await self._force_close(session.sync_session)
        if error is not None and not isinstance(error, Exception) and self._sqlite:
            # Cancelled: SQLAlchemy invalidated the connection if a query was in flight (the
            # invalidate event interrupts it); the cursor it leaves must not keep the file open.
            _release_frames(error)
        sync = session.sync_session
        try:
            if error is None and self._autocommit and session.in_transaction():
                try:
                    await session.commit()
                except Exception:
                    # What the server kept is unknown (SQLite even leaves the transaction open
                    # after a failed COMMIT, for the next unit to see): discard the connection
                    # instead of trusting a rollback on it.
                    await self._force_close(sync)
                    raise
        finally:
            # close() rolls back what was not committed and returns the connection, also when
            # the request was cancelled.
            try:
                clean = await finish(session.close, self._finish_timeout, self.name)
                if _session_connections(sync):
                    # close() was abandoned (stuck past its deadline): discard what it held.
                    await self._force_close(sync)
            except Exception as exc:
                # Another task is still inside this session (gather over one session), or the
                # connection broke while being reset: close() could not return it, so discard it
                # before the gate gives the slot back.
                await self._force_close(sync)
                if _is_concurrency_error(exc) or (error is not None
                                                  and _is_concurrency_error(error)):
                    raise self._concurrent(error or exc) from exc
                raise
            finally:
                # From now on the session refuses to check a connection out: no work after the
                # unit of work ended can go past the gate.
                sync.bind = EndedBind(self.name)  # type: ignore[assignment]
        if error is not None and _is_concurrency_error(error):
            raise self._concurrent(error) from error
        return clean

    def _concurrent(self, cause: BaseException) -> ConcurrentUse:
        return ConcurrentUse(
            f"pool {self.name!r}: two tasks used one session at the same time "
            f"({type(cause).__name__}); a session is one unit of work on one connection: await "
            "its operations in turn, or give each task its own `async with "
            f"manager.session({self.name!r})`", pool=self.name)

    async def _force_close(self, sync: Any) -> None:
        """Discard the connections of a session that close() could not end.

        A task may be checking a connection out for the session right now: wait (at most the
        time a checkout may take) until it holds it, then invalidate every connection the session
        holds. Invalidating outside SQLAlchemy's greenlet terminates the driver connection at once
        (no round trip) and checks it back in, so the slot goes back with no connection out.
        """
        sync.bind = EndedBind(self.name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._finish_timeout
        try:
            while _changing(sync) and loop.time() < deadline:
                await asyncio.sleep(0.005)
        finally:
            for conn in _session_connections(sync):
                try:
                    if not conn.closed and not conn.invalidated:
                        conn.invalidate()
                except Exception:
                    logger.debug("connman: pool %r: invalidating a session's connection failed",
                                 self.name, exc_info=True)
