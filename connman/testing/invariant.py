"""The gate invariant, checked from tests: no connection in use outside a lease.

`gate_violations()` looks at every open pool of this process and at what pools reported when they
closed; a suite runs it after every test (see tests/conftest.py) so that no code path can take a
connection past the gate unnoticed.
"""

from __future__ import annotations

import asyncio
import weakref

from .._pool import _POOLS, GATE_REPORTS, Pool

__all__ = ["gate_violations", "settle"]

_reported: weakref.WeakSet[Pool] = weakref.WeakSet()


def _open_pools() -> list[Pool]:
    out = []
    for pool in list(_POOLS):
        loop = pool._loop
        if pool.closed or loop is None or loop.is_closed() or pool in _reported:
            continue
        out.append(pool)
    return out


def gate_violations(*, reset: bool = True) -> list[str]:
    """What breaks the invariant now: leases still held and connections checked out past the gate
    (open pools), and what closing pools reported. Each pool is reported once."""
    found = list(GATE_REPORTS)
    if reset:
        GATE_REPORTS.clear()
    for pool in _open_pools():
        problems = []
        if pool._active:
            problems.append(f"{pool._active} lease(s) still held")
        escaped = pool.off_books()
        if escaped:
            problems.append(f"{escaped} connection(s) checked out past the gate")
        if problems:
            found.append(f"pool {pool.name!r}: " + ", ".join(problems))
            if reset:
                _reported.add(pool)
    return found


async def settle(timeout: float = 2.0) -> list[str]:
    """Wait up to `timeout` seconds for the open pools to hold the invariant (tasks still ending
    their units of work), then return `gate_violations()`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline and gate_violations(reset=False):
        await asyncio.sleep(0.02)
    return gate_violations()
