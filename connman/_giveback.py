"""Giving a connection back whatever happens: cancellation, a stuck network.

`shielded` runs a step to its end even if the caller is cancelled; `finish` runs the step that
gives a unit of work's connection back (`session.close()`) cheaply when nothing interferes and
shielded when a cancellation does. Every backend and the test binding give connections back
through these.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["finish", "shielded"]

logger = logging.getLogger("connman")
T = TypeVar("T")


async def _bounded(aw: Awaitable[T], timeout: float | None) -> T:
    if timeout is None:
        return await aw
    async with asyncio.timeout(timeout):
        return await aw


async def shielded(aw: Awaitable[T], timeout: float | None = None) -> T:
    """Run `aw` to completion even if the caller is cancelled meanwhile; re-raise the cancel after.

    Used for every step that returns a connection: a cancelled request must not leak one.
    """
    task: asyncio.Future[T] = asyncio.get_running_loop().create_task(
        _bounded(aw, timeout), name="connman-give-back")
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                if task.cancelled():
                    raise
                result = task.result()
                cancelled = True
                break
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


async def finish(step: Callable[[], Awaitable[None]], timeout: float, pool: str) -> bool:
    """Run a step that gives a connection back (`session.close()`), whatever happens meanwhile.

    The common case awaits it directly: a task, a shield and a timer per request would cost more
    than the rest of connman's work. Under cancellation it runs shielded, and a step the cancel
    interrupted is run again shielded, so the connection still goes back; there, a step stuck past
    `timeout` (seconds; a network cut) is abandoned and the driver discards that connection.

    Returns True if the step ran to its end uninterrupted, False if a cancellation cut into it
    or it was abandoned (the caller then checks that nothing stayed checked out). Re-raises the
    step's errors and the caller's cancellation.
    """
    try:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            await shielded(step(), timeout)
            return False
        try:
            await step()
        except asyncio.CancelledError:
            await shielded(step(), timeout)
            raise
        return True
    except TimeoutError:
        logger.warning("connman: pool %r: returning a connection took over %.0fs; discarded",
                       pool, timeout)
        return False
