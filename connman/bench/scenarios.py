"""The scenarios: closed-loop load at a fixed concurrency, FastAPI over real HTTP, pool exhaustion,
and cold start. Each returns plain measurements; the runner decides what to run and in what order.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .targets import ROWS
from .variants import Variant

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["SWEEP_SCENARIOS", "Burst", "Sample", "build_app", "burst", "closed_loop",
           "http_op", "open_close", "refusal", "serve", "summarize"]

SWEEP_SCENARIOS = ("checkout", "read", "write")
"""The scenarios swept over concurrency, by variant method name."""
perf = time.perf_counter
Op = Callable[[int], Awaitable[Any]]


@dataclass
class Sample:
    """One measurement: operations done, their latencies (s), errors and the wall time."""

    latencies: list[float]
    wall_s: float
    errors: int = 0
    first_error: str = ""
    truncated: bool = False

    @property
    def throughput(self) -> float:
        """Successful operations per second."""
        return len(self.latencies) / self.wall_s if self.wall_s > 0 else 0.0


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile `q` (0..100) of already sorted values; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(latencies: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean in milliseconds."""
    values = sorted(latencies)
    out = {f"p{name}_ms": percentile(values, q) * 1000
           for name, q in (("50", 50), ("90", 90), ("99", 99), ("999", 99.9))}
    out["max_ms"] = values[-1] * 1000 if values else 0.0
    out["mean_ms"] = sum(values) / len(values) * 1000 if values else 0.0
    return out


def histogram(latencies: Sequence[float]) -> dict[str, int]:
    """Log-bucketed counts: key b counts latencies in [10^(b/20), 10^((b+1)/20)) microseconds."""
    out: dict[str, int] = {}
    for s in latencies:
        b = str(math.floor(math.log10(max(s * 1e6, 1e-3)) * 20))
        out[b] = out.get(b, 0) + 1
    return out


async def closed_loop(op: Op, concurrency: int, total_ops: int, max_seconds: float) -> Sample:
    """`concurrency` workers run `op` back to back until `total_ops` are done (or time is up)."""
    remaining = total_ops
    latencies: list[float] = []
    errors = 0
    first_error = ""
    truncated = False
    deadline = perf() + max_seconds

    async def worker(i: int) -> None:
        nonlocal remaining, errors, first_error, truncated
        k = i % ROWS + 1
        while remaining > 0:
            remaining -= 1
            k = (k * 48271) % ROWS + 1
            t0 = perf()
            try:
                await op(k)
            except Exception as exc:
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"[:300]
            else:
                latencies.append(perf() - t0)
            if t0 > deadline:
                truncated = True
                return

    t0 = perf()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return Sample(latencies, perf() - t0, errors, first_error, truncated)


# ---------------------------------------------------------------------------- HTTP
def build_app(variants: Sequence[Variant]) -> FastAPI:
    """A FastAPI app with `GET /<variant>/{k}` (a point read) for each variant."""
    from fastapi import FastAPI

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    for v in variants:
        v.add_route(app)
    return app


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Run `app` under uvicorn on a free loopback port in this event loop; yields its base URL."""
    import uvicorn

    from connman.testing.servers import free_port

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(1000):
            if server.started:
                break
            if task.done():
                task.result()
                raise RuntimeError("uvicorn exited during startup")
            await asyncio.sleep(0.01)
        else:
            raise RuntimeError("uvicorn did not start within 10 s")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


def http_op(client: Any, route: str) -> Op:
    """GET /<route>/{k}; anything but 200 is an error."""

    async def op(k: int) -> None:
        response = await client.get(f"/{route}/{k}")
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")

    return op


# ---------------------------------------------------------------------------- exhaustion
@dataclass
class Burst:
    """One burst against a small pool: waits of granted requests, timeouts, rejections (s)."""

    granted: list[float] = field(default_factory=list)
    timeouts: list[float] = field(default_factory=list)
    rejected: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""


def refusal(exc: BaseException) -> str | None:
    """'rejected' (max_waiting), 'timeout' (any pool's wait timeout) or None (a real error)."""
    from sqlalchemy.exc import TimeoutError as SATimeout

    from connman import TooManyWaiters

    if isinstance(exc, TooManyWaiters):
        return "rejected"
    if isinstance(exc, TimeoutError | SATimeout):
        return "timeout"
    return None


async def burst(variant: Variant, concurrency: int, hold_s: float) -> Burst:
    """`concurrency` requests at once, each holding a connection `hold_s`."""
    out = Burst()

    async def one() -> None:
        t0 = perf()
        try:
            waited = await variant.hold(hold_s)
        except Exception as exc:
            elapsed = perf() - t0
            kind = refusal(exc)
            if kind == "rejected":
                out.rejected.append(elapsed)
            elif kind == "timeout":
                out.timeouts.append(elapsed)
            else:
                out.errors += 1
                out.first_error = out.first_error or f"{type(exc).__name__}: {exc}"[:300]
        else:
            out.granted.append(waited)

    await asyncio.gather(*(one() for _ in range(concurrency)))
    return out


# ---------------------------------------------------------------------------- cold start
async def open_close(pools: Mapping[str, Mapping[str, Any]]) -> tuple[float, float]:
    """(open, close) seconds of a lifespan over a fresh manager with these pools."""
    from connman import ConnectionManager

    manager = ConnectionManager(dict(pools))
    t0 = perf()
    async with manager.lifespan(None):
        t1 = perf()
    return t1 - t0, perf() - t1
