"""Every fault scenario, fast size, on every backend it applies to (one parametrised test).

`CONNMAN_FAULTS_FULL=1` runs the full sizes instead (20,000 requests of sustained load, ...);
`python -m tests.faults.report [--full]` runs the same and writes docs/reliability.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from .._targets import Target
from ..conftest import target_params
from .load import shutdown
from .scenarios import KNOWN_ISSUES, SCENARIOS, Env, run_scenario

FULL = os.environ.get("CONNMAN_FAULTS_FULL", "") not in ("", "0")
SLOW = {"sustained_load"}


def cases() -> Iterator[Any]:
    marks = {p.values[0]: list(p.marks) for p in target_params()}
    for scenario in SCENARIOS.values():
        for tid in scenario.targets:
            extra = [pytest.mark.pgbouncer] if "pgbouncer" in scenario.needs else []
            if scenario.name in SLOW:
                extra.append(pytest.mark.slow)
            known = KNOWN_ISSUES.get((scenario.name, tid))
            if known is not None:
                reason, every_time = known
                extra.append(pytest.mark.xfail(reason=reason, strict=every_time))
            yield pytest.param(scenario.name, tid, id=f"{scenario.name}-{tid}",
                               marks=[*marks[tid], *extra])


@pytest.fixture(scope="session")
def replica_server(postgres_server: Any) -> Iterator[Any]:
    """A streaming replica of the shared PostgreSQL (for the replica scenarios)."""
    from connman.testing.servers import PostgresReplicaServer

    with PostgresReplicaServer(postgres_server) as server:
        yield server


@pytest.fixture(scope="module", autouse=True)
def _load_worker() -> Iterator[None]:
    yield
    shutdown()


@pytest.mark.parametrize(("scenario", "target"), list(cases()), indirect=["target"])
async def test_fault(scenario: str, target: Target, request: pytest.FixtureRequest) -> None:
    s = SCENARIOS[scenario]
    servers = {name: request.getfixturevalue(f"{name}_server") for name in s.needs}
    fig = await run_scenario(s, Env(target, full=FULL, servers=servers))
    print(fig)
    assert not fig["problems"], fig
