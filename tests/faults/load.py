"""HTTP load for the fault scenarios: httpx clients in a worker process, bounded in count and time.

The load runs in one long-lived spawned process so that the client and the app under test do not
share a core (on this 2-core machine that is ~1.5× the throughput of an in-process client). It is
bounded three ways: a request count, a wall-clock limit, and a stop file the scenario creates when
it has seen what it needs. Every request's outcome comes back to the scenario.

httpx's connection pool slows down sharply past a handful of connections per client, so the load
spreads its concurrency over several clients of `per_client` connections each.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import multiprocessing
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import NamedTuple

import httpx

__all__ = ["Outcome", "Plan", "run", "run_load", "shutdown"]


@dataclass(frozen=True)
class Plan:
    """What to send: how many requests, how many at once, which routes, for how long at most."""

    base_url: str
    requests: int
    concurrency: int
    prefix: str
    """Write keys are `<prefix>-<n>`."""
    write_ratio: float = 0.5
    """Share of POST /items/{key}; the rest read a key this load already wrote."""
    slow: float | None = None
    """If set, every request is GET /slow?seconds=<slow> instead."""
    timeout: float = 15.0
    """Client timeout per request (seconds)."""
    timeout_jitter: tuple[float, float] | None = None
    """If set, each request's client timeout is drawn uniformly from this range (a storm)."""
    max_seconds: float = 60.0
    stop_file: str | None = None
    """The load stops soon after this file appears."""
    per_client: int = 5
    pace: float = 0.0
    """Seconds each worker waits between two requests."""
    read_path: str = "/items"
    """Reads are GET <read_path>/{key}."""


class Outcome(NamedTuple):
    """One request as the client saw it; `status` 0 means no HTTP response at all."""

    method: str
    key: str
    t0: float
    t1: float
    status: int
    label: str
    retry_after: str | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def _label(resp: httpx.Response) -> str:
    if resp.status_code < 400:
        return ""
    try:
        body = resp.json()
    except ValueError:
        return "non-json"
    if not isinstance(body, dict):
        return "non-json"
    if "error" in body:
        return str(body["error"])
    detail = str(body.get("detail", ""))
    if resp.status_code == 503:
        for label, words in (("statement_timeout", "within statement_timeout"), ("busy", "busy"),
                             ("closing", "shutting down"), ("unanswered", "did not answer"),
                             ("unavailable", "is unavailable:"),
                             ("lost", "the server ended the connection")):
            if words in detail:
                return label
        return detail
    if resp.status_code == 404:
        return "missing"
    return detail[:60]


def _stop_requested(plan: Plan, deadline: float) -> bool:
    """Past the time limit, or the stop file exists (one cheap stat every 20 ms)."""
    return time.monotonic() > deadline or bool(plan.stop_file and os.path.exists(plan.stop_file))


async def _run(plan: Plan) -> list[Outcome]:
    nclients = max(1, -(-plan.concurrency // plan.per_client))
    # keepalive_expiry below uvicorn's 5 s keep-alive timeout: with equal values, a request sent
    # on a connection idle for ~5 s races the server closing it ("Server disconnected without
    # sending a response"), an artefact of the harness, not of the app.
    limits = httpx.Limits(max_connections=plan.per_client,
                          max_keepalive_connections=plan.per_client, keepalive_expiry=1.0)
    clients = [httpx.AsyncClient(base_url=plan.base_url, limits=limits, timeout=plan.timeout)
               for _ in range(nclients)]
    out: list[Outcome] = []
    acked: list[str] = []
    issued = 0
    deadline = time.monotonic() + plan.max_seconds
    stop = asyncio.Event()

    async def watch() -> None:
        while not stop.is_set():
            if _stop_requested(plan, deadline):
                stop.set()
                return
            await asyncio.sleep(0.02)

    async def worker(i: int) -> None:
        nonlocal issued
        client = clients[i % nclients]
        rng = random.Random(i)
        while not stop.is_set() and issued < plan.requests:
            n = issued
            issued += 1
            timeout = (rng.uniform(*plan.timeout_jitter) if plan.timeout_jitter
                       else plan.timeout)
            if plan.slow is not None:
                method, key, url = "GET", "", f"/slow?seconds={plan.slow}"
            elif acked and rng.random() >= plan.write_ratio:
                key = rng.choice(acked)
                method, url = "GET", f"{plan.read_path}/{key}"
            else:
                key = f"{plan.prefix}-{n}"
                method, url = "POST", f"/items/{key}"
            t0 = time.monotonic()
            try:
                resp = await client.request(method, url, timeout=timeout)
            except httpx.HTTPError as exc:
                out.append(Outcome(method, key, t0, time.monotonic(), 0, type(exc).__name__, None))
            else:
                out.append(Outcome(method, key, t0, time.monotonic(), resp.status_code,
                                   _label(resp), resp.headers.get("retry-after")))
                if method == "POST" and resp.is_success:
                    acked.append(key)
            if plan.pace:
                await asyncio.sleep(plan.pace)

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.gather(*(worker(i) for i in range(plan.concurrency)))
    finally:
        stop.set()
        await watcher
        for client in clients:
            await client.aclose()
    return out


def run(plan: Plan) -> list[Outcome]:
    """Run `plan` in this process and return every request's outcome."""
    return asyncio.run(_run(plan))


_executor: ProcessPoolExecutor | None = None


def _pool() -> ProcessPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    return _executor


async def run_load(plan: Plan) -> list[Outcome]:
    """Run `plan` in the load worker process (started on first use, reused after)."""
    global _executor
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(_pool(), run, plan)
    except BrokenProcessPool:
        _executor = None
        return await loop.run_in_executor(_pool(), run, plan)


def shutdown() -> None:
    """Stop the load worker process (also done at interpreter exit)."""
    global _executor
    if _executor is not None:
        with contextlib.suppress(Exception):
            _executor.shutdown(wait=True, cancel_futures=True)
        _executor = None


atexit.register(shutdown)
