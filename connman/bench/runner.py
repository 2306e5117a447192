"""Runs the suite: finds or starts the servers, runs each scenario with the variants interleaved,
shows progress with rich, and hands the raw results to `report.write`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from .bursts import burst_series, probe
from .deps import require_bench, require_drivers
from .infra import SECANTUS_NOTE, Servers, environment, parse_urls
from .raw import make_variants, raw_variant
from .report import write as write_report
from .scenarios import (
    SWEEP_SCENARIOS,
    Burst,
    Op,
    Sample,
    build_app,
    burst,
    closed_loop,
    histogram,
    http_op,
    open_close,
    serve,
    summarize,
)
from .targets import BACKENDS, QUICK_BACKENDS, PoolSettings, Target, prepare, server_version
from .variants import (
    ConnmanVariant,
    FastVariant,
    HandMongo,
    HandSql,
    Variant,
    with_max_waiting,
)

__all__ = ["FULL", "QUICK", "SCENARIOS", "Plan", "arun", "run"]

SCENARIOS = ("sweep", "http", "exhaustion", "bursts", "cold")
"""What `--scenarios` can choose: the concurrency sweep, the FastAPI endpoint, pool exhaustion,
bursts, and the cold start; default all."""

T = TypeVar("T")
SKIP_REASONS = {
    "mongo/write": "SecantusDB's write throughput falls from hundreds to ~30 updates/s once it "
                   "has taken ~10,000 writes since it started (reads stay fast), so the Mongo "
                   "write sweep stops at concurrency 100 with few operations, on a freshly "
                   "started server per Mongo backend; at 1000 it would only measure the server.",
}


@dataclass(frozen=True)
class Plan:
    """How much to run: concurrencies, operation counts, repetitions and scenario sizes."""

    quick: bool
    concurrencies: tuple[int, ...]
    repetitions: int
    ops: Mapping[int, int]
    warmup_ops: int
    http_concurrency: int
    http_ops: int
    cold_reps: int
    exhaust_reps: int
    exhaust_size: int = 4
    exhaust_factor: int = 10
    exhaust_hold_s: float = 0.1
    exhaust_timeout_s: float = 0.5
    exhaust_max_waiting: int = 8
    cold_pool_size: int = 5
    cold_link_ms: float = 2.5
    """One-way delay of the second cold-start round, through a TCP proxy (0: loopback only)."""
    max_seconds: float = 20.0
    bursts: int = 30
    """Bursts per variant and repetition in the burst scenario."""
    burst_reps: int = 3
    burst_size: int = 10
    burst_overflow: int = 20
    burst_factor: int = 10
    """Units of work per burst: `burst_factor x burst_size`."""
    burst_gap_s: float = 0.05
    sweep: PoolSettings = field(default_factory=PoolSettings)
    overrides: Mapping[str, Mapping[int, int]] = field(default_factory=dict)
    """Per "family/scenario": operations by concurrency; a concurrency left out is skipped."""
    scenarios: tuple[str, ...] = SCENARIOS

    def ops_for(self, family: str, scenario: str) -> Mapping[int, int]:
        """Operations per sample by concurrency for one family and scenario."""
        return self.overrides.get(f"{family}/{scenario}", self.ops)

    def steps(self, family: str) -> int:
        """Progress steps one backend of `family` takes."""
        n_variants = 4
        on = self.scenarios
        sweep = self.repetitions * n_variants * sum(
            len([c for c in self.concurrencies if c in self.ops_for(family, s)])
            for s in SWEEP_SCENARIOS) if "sweep" in on else 0
        http = self.repetitions * (n_variants + (1 if family == "sql" else 0)) if (
            "http" in on) else 0
        exhaust = self.exhaust_reps * (4 if family == "sql" else 2) if "exhaustion" in on else 0
        bursts = self.burst_reps * n_variants if "bursts" in on else 0
        return int("sweep" in on) + sweep + http + exhaust + bursts


FULL = Plan(quick=False, concurrencies=(1, 10, 100, 1000), repetitions=3,
            ops={1: 120, 10: 200, 100: 300, 1000: 1000}, warmup_ops=60, http_concurrency=10,
            http_ops=150, cold_reps=5, exhaust_reps=3,
            overrides={"mongo/write": {1: 40, 10: 80, 100: 200}})
"""The full suite (about 10 minutes for every backend on 2 cores)."""
QUICK = Plan(quick=True, concurrencies=(1, 10), repetitions=1, ops={1: 60, 10: 120},
             warmup_ops=40, http_concurrency=10, http_ops=60, cold_reps=1, exhaust_reps=1,
             overrides={"mongo/write": {1: 30, 10: 60}},
             exhaust_hold_s=0.05, exhaust_timeout_s=0.2, max_seconds=5.0, bursts=8,
             burst_reps=1)
"""The quick smoke run (what tests/test_bench.py runs): few operations, one repetition."""


def rotate(items: Sequence[T], by: int) -> list[T]:
    """`items` rotated left by `by` (ABCD, BCDA, ...): each repetition starts elsewhere."""
    if not items:
        return []
    by %= len(items)
    return [*items[by:], *items[:by]]


class Progress:
    """A rich progress bar on stderr, or nothing."""

    def __init__(self, total: int, enabled: bool) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(stderr=True)
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), console=self.console,
                            disable=not enabled, transient=False)
        self.task = self.bar.add_task("connman bench", total=total)
        self.enabled = enabled

    def __enter__(self) -> Progress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.update(self.task, completed=self.bar.tasks[0].total)
        self.bar.__exit__(None, None, None)

    def step(self, what: str, n: int = 1) -> None:
        """Advance by `n`, showing `what` is running now."""
        self.bar.update(self.task, advance=n, description=what)

    def log(self, message: str) -> None:
        """Print a line above the bar."""
        if self.enabled:
            self.console.log(message)


class Recorder:
    """Collects raw measurements as JSON-ready dicts."""

    def __init__(self) -> None:
        self.samples: list[dict[str, Any]] = []
        self.exhaustion: list[dict[str, Any]] = []
        self.cold: list[dict[str, Any]] = []
        self.failures: dict[str, str] = {}
        self.skipped: list[dict[str, Any]] = []
        self.bursts: list[dict[str, Any]] = []

    def sample(self, backend: str, scenario: str, variant: str, concurrency: int, rep: int,
               s: Sample, cpu_s: float) -> None:
        """Record one closed-loop measurement."""
        n = len(s.latencies)
        self.samples.append({
            "backend": backend, "scenario": scenario, "variant": variant,
            "concurrency": concurrency, "rep": rep, "ops": n, "errors": s.errors,
            "first_error": s.first_error, "truncated": s.truncated,
            "wall_s": round(s.wall_s, 6), "throughput": round(s.throughput, 2),
            "cpu_us_per_op": round(cpu_s / n * 1e6, 2) if n else 0.0,
            **{k: round(v, 4) for k, v in summarize(s.latencies).items()},
            "histogram": histogram(s.latencies),
        })

    def burst(self, backend: str, variant: str, rep: int, plan: Plan, max_waiting: int,
              b: Burst) -> None:
        """Record one exhaustion burst."""
        def ms(values: list[float]) -> dict[str, float]:
            return {k: round(v, 4) for k, v in summarize(values).items()}

        self.exhaustion.append({
            "backend": backend, "variant": variant, "rep": rep,
            "requests": plan.exhaust_factor * plan.exhaust_size, "pool_max": plan.exhaust_size,
            "timeout_s": plan.exhaust_timeout_s, "hold_s": plan.exhaust_hold_s,
            "max_waiting": max_waiting, "granted": len(b.granted), "timeouts": len(b.timeouts),
            "rejected": len(b.rejected), "errors": b.errors, "first_error": b.first_error,
            "wait": ms(b.granted), "timeout": ms(b.timeouts), "reject": ms(b.rejected),
        })


# ---------------------------------------------------------------------------- scenarios
async def measure(op: Op, concurrency: int, ops: int, max_seconds: float
                  ) -> tuple[Sample, float]:
    """A closed-loop sample and the process CPU seconds it used."""
    gc.collect()
    c0 = time.process_time()
    sample = await closed_loop(op, concurrency, ops, max_seconds)
    return sample, time.process_time() - c0


async def sweep(target: Target, variants: Sequence[Variant], plan: Plan, rec: Recorder,
                progress: Progress) -> None:
    """checkout, read, write at each concurrency; variants interleaved, rotated per repetition."""
    name = target.backend.name
    family = target.backend.family
    progress.step(f"{name}: warm-up", 0)
    for scenario in SWEEP_SCENARIOS:
        warm = min(plan.warmup_ops, *plan.ops_for(family, scenario).values())
        for v in variants:
            await closed_loop(v.op(scenario), plan.sweep.max_size, warm, plan.max_seconds)
    progress.step(f"{name}: warm-up")
    for scenario in SWEEP_SCENARIOS:
        ops = plan.ops_for(family, scenario)
        for c in plan.concurrencies:
            if c not in ops:
                rec.skipped.append({"backend": name, "scenario": scenario, "concurrency": c,
                                    "reason": SKIP_REASONS.get(f"{family}/{scenario}", "")})
    for rep in range(plan.repetitions):
        for scenario in SWEEP_SCENARIOS:
            ops = plan.ops_for(family, scenario)
            for c in (c for c in plan.concurrencies if c in ops):
                for v in rotate(variants, rep):
                    progress.step(f"{name}: {scenario} c={c} {v.name} (rep {rep + 1})", 0)
                    sample, cpu = await measure(v.op(scenario), c, ops[c], plan.max_seconds)
                    rec.sample(name, scenario, v.name, c, rep, sample, cpu)
                    progress.step(f"{name}: {scenario} c={c} {v.name} (rep {rep + 1})")


async def http(target: Target, variants: Sequence[Variant], plan: Plan, rec: Recorder,
               progress: Progress) -> None:
    """GET /<variant>/{k} through uvicorn on loopback with httpx at a fixed concurrency."""
    import httpx

    name = target.backend.name
    routes = [v.name for v in variants]
    if target.backend.family == "sql":
        routes.insert(2, "hand_fn")
    c = plan.http_concurrency
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    async with (serve(build_app(variants)) as base,
                httpx.AsyncClient(base_url=base, limits=limits, timeout=30.0) as client):
        for route in routes:
            await closed_loop(http_op(client, route), c, plan.warmup_ops // 2, plan.max_seconds)
        for rep in range(plan.repetitions):
            for route in rotate(routes, rep):
                progress.step(f"{name}: http {route} (rep {rep + 1})", 0)
                sample, cpu = await measure(http_op(client, route), c, plan.http_ops,
                                            plan.max_seconds)
                rec.sample(name, "http", route, c, rep, sample, cpu)
                progress.step(f"{name}: http {route} (rep {rep + 1})")


async def exhaustion(target: Target, plan: Plan, rec: Recorder, progress: Progress) -> None:
    """Bursts of 10x max_size requests on a small pool with a short timeout (and max_waiting)."""
    s = PoolSettings(size=plan.exhaust_size, overflow=0, timeout=plan.exhaust_timeout_s)
    variants: list[Variant] = [
        ConnmanVariant(target, s),
        ConnmanVariant(target, with_max_waiting(s, plan.exhaust_max_waiting),
                       name="connman_maxwait"),
    ]
    if target.backend.family == "sql":
        variants += [HandSql(target, s), raw_variant(target, s)]
    name = target.backend.name
    async with opened(variants) as live:
        for rep in range(plan.exhaust_reps):
            for v in rotate(live, rep):
                progress.step(f"{name}: exhaustion {v.name} (rep {rep + 1})", 0)
                if v.name == "raw" and target.backend.driver == "aiosqlite":
                    progress.step(f"{name}: exhaustion {v.name} (rep {rep + 1})")
                    continue  # one connection, no pool: nothing comparable to measure
                b = await burst(v, plan.exhaust_factor * plan.exhaust_size, plan.exhaust_hold_s)
                mw = v.settings.max_waiting
                rec.burst(name, v.name, rep, plan, mw, b)
                progress.step(f"{name}: exhaustion {v.name} (rep {rep + 1})")


async def bursts(target: Target, plan: Plan, rec: Recorder, progress: Progress) -> None:
    """Bursts of `burst_factor x burst_size` units, `burst_gap_s` apart, each variant on its own
    pool (the fast path too, so no variant inherits another's connections); rotated per rep."""
    s = PoolSettings(size=plan.burst_size, overflow=plan.burst_overflow)
    connman = ConnmanVariant(target, s)
    fast_pool = ConnmanVariant(target, s, name="connman_fast")
    hand: Variant = (HandMongo(target, s) if target.backend.family == "mongo"
                     else HandSql(target, s))
    measured: list[Variant] = [connman, FastVariant(fast_pool), hand, raw_variant(target, s)]
    name = target.backend.name
    units = plan.burst_factor * plan.burst_size
    async with opened([connman, fast_pool, hand, measured[3]]):
        probes = {v.name: probe(v) for v in measured}
        for rep in range(plan.burst_reps):
            for v in rotate(measured, rep):
                what = f"{name}: bursts {v.name} (rep {rep + 1})"
                progress.step(what, 0)
                gc.collect()
                series = await burst_series(*probes[v.name], units, plan.bursts, plan.burst_gap_s)
                rec.bursts.append({
                    "backend": name, "variant": v.name, "rep": rep, "units": units,
                    "burst_ms": [round(x * 1000, 3) for x in series.seconds],
                    "opened": series.opened, "errors": series.errors,
                    "first_error": series.first_error})
                progress.step(what)


async def cold_start(targets: Sequence[Target], plan: Plan, rec: Recorder,
                     progress: Progress) -> dict[str, str]:
    """open() of a lifespan with 4 pools vs each of those pools opened alone.

    Twice: on loopback, where opening is CPU-bound in the one event loop, and through a proxy
    adding `cold_link_ms` each way (a link between zones), where it waits on the network.
    """
    order = ("postgres-asyncpg", "mysql-aiomysql", "mongo-pymongo", "sqlite-aiosqlite",
             "pgbouncer-asyncpg", "mysql-asyncmy", "mongo-motor", "postgres-psycopg")
    by_name = {t.backend.name: t for t in targets}
    chosen = [by_name[n] for n in order if n in by_name][:4]
    if not chosen:
        return {}
    while len(chosen) < 4:
        chosen.append(chosen[len(chosen) % len(chosen)])
    which = {f"p{i + 1}": t.backend.name for i, t in enumerate(chosen)}
    s = PoolSettings(size=plan.cold_pool_size, overflow=plan.cold_pool_size)
    links = [0.0] + ([plan.cold_link_ms] if plan.cold_link_ms > 0 else [])
    for link_ms in links:
        label = f"cold start, {'loopback' if not link_ms else f'{link_ms:g} ms link'}"
        with linked(chosen, link_ms) as linked_targets:
            pools = {f"p{i + 1}": t.pool_config(s) for i, t in enumerate(linked_targets)}
            for rep in range(plan.cold_reps):
                progress.step(f"{label} (rep {rep + 1})", 0)
                entry: dict[str, Any] = {"rep": rep, "link_ms": link_ms, "single_open_s": {},
                                         "single_close_s": {}}
                for key in rotate([*pools, "all"], rep):
                    subset = pools if key == "all" else {key: pools[key]}
                    gc.collect()
                    open_s, close_s = await open_close(subset)
                    if key == "all":
                        entry["all_open_s"] = round(open_s, 6)
                        entry["all_close_s"] = round(close_s, 6)
                    else:
                        entry["single_open_s"][key] = round(open_s, 6)
                        entry["single_close_s"][key] = round(close_s, 6)
                rec.cold.append(entry)
                progress.step(f"{label} (rep {rep + 1})")
    return which


@contextlib.contextmanager
def linked(targets: Sequence[Target], link_ms: float) -> Iterator[list[Target]]:
    """The targets as they are (link_ms=0), or each server reached through a delaying proxy."""
    if not link_ms:
        yield list(targets)
        return
    from connman.testing.proxy import TcpProxy

    proxies: dict[tuple[str, int], TcpProxy] = {}
    out: list[Target] = []
    try:
        for t in targets:
            parts = urlsplit(t.url)
            if not parts.port or not parts.hostname:
                out.append(t)  # SQLite: no network to delay
                continue
            key = (parts.hostname, parts.port)
            if key not in proxies:
                proxies[key] = TcpProxy(parts.hostname, parts.port).start()
                proxies[key].latency(link_ms / 1000)
            netloc = parts.netloc.replace(f"{parts.hostname}:{parts.port}",
                                          f"127.0.0.1:{proxies[key].port}")
            out.append(replace(t, url=urlunsplit(parts._replace(netloc=netloc))))
        yield out
    finally:
        for proxy in proxies.values():
            proxy.stop()


@contextlib.asynccontextmanager
async def opened(variants: Sequence[Variant]) -> Any:
    """Open the variants (concurrently), yield them, close them all even on error."""
    done: list[Variant] = []

    async def one(v: Variant) -> None:
        await v.open()
        done.append(v)

    try:
        results = await asyncio.gather(*(one(v) for v in variants), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        yield [v for v in variants if v in done]
    finally:
        await asyncio.gather(*(v.close() for v in done), return_exceptions=True)


async def bench_backend(target: Target, plan: Plan, rec: Recorder, progress: Progress) -> None:
    """Every scenario on one backend."""
    await prepare(target)
    on = plan.scenarios
    if "sweep" in on or "http" in on:
        async with opened(make_variants(target, plan.sweep)) as variants:
            if "sweep" in on:
                await sweep(target, variants, plan, rec, progress)
            if "http" in on:
                await http(target, variants, plan, rec, progress)
    if "exhaustion" in on:
        await exhaustion(target, plan, rec, progress)
    if "bursts" in on:
        await bursts(target, plan, rec, progress)


# ---------------------------------------------------------------------------- entry points
def make_plan(quick: bool, repetitions: int | None,
              scenarios: Sequence[str] | None = None) -> Plan:
    """QUICK or FULL, with the repetitions and the scenarios overridden when given."""
    plan = QUICK if quick else FULL
    if repetitions is not None:
        plan = replace(plan, repetitions=repetitions, burst_reps=repetitions)
    if scenarios is not None:
        unknown = [s for s in scenarios if s not in SCENARIOS]
        if unknown:
            raise ValueError(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
        plan = replace(plan, scenarios=tuple(s for s in SCENARIOS if s in scenarios))
    return plan


async def arun(quick: bool = False, backends: Sequence[str] | None = None,
               out: Path = Path("benchmarks/results"),
               urls: Mapping[str, str] | Sequence[str] | None = None,
               repetitions: int | None = None, progress: bool = True,
               scenarios: Sequence[str] | None = None) -> Path:
    """The suite, in the running event loop; returns the run's results directory."""
    plan = make_plan(quick, repetitions, scenarios)
    names = list(backends or (QUICK_BACKENDS if quick else BACKENDS))
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; known: {', '.join(BACKENDS)}")
    require_bench()
    require_drivers(BACKENDS[n].driver for n in names)
    started = datetime.now(UTC)
    t0 = time.monotonic()
    rec = Recorder()
    env = environment()
    server_versions: dict[str, str] = {}
    servers = Servers({BACKENDS[n].server for n in names} - {""}, parse_urls(urls))
    total = (sum(plan.steps(BACKENDS[n].family) for n in names)
             + (plan.cold_reps * (2 if plan.cold_link_ms > 0 else 1)
                if "cold" in plan.scenarios else 0))
    cold_pools: dict[str, str] = {}
    try:
        with Progress(total, progress) as bar:
            bar.step("starting servers", 0)
            await servers.start()
            ready: list[str] = []
            mongo_runs = 0
            for n in names:
                backend = BACKENDS[n]
                try:
                    if backend.server == "mongo":
                        mongo_runs += 1
                        if mongo_runs > 1:
                            bar.step(f"{n}: restarting the throwaway Mongo server", 0)
                            await servers.fresh("mongo")
                    target = servers.target(backend)
                    server_versions[n] = await server_version(target)
                    bar.log(f"{n}: {server_versions[n]}")
                    await bench_backend(target, plan, rec, bar)
                    ready.append(n)
                except Exception as exc:
                    rec.failures[n] = f"{type(exc).__name__}: {exc}"
                    bar.log(f"[red]{n} failed: {exc}")
                    traceback.print_exc(file=sys.stderr)
            # Built again: a restarted throwaway server has a new port.
            if "cold" in plan.scenarios:
                cold_pools = await cold_start([servers.target(BACKENDS[n]) for n in ready],
                                              plan, rec, bar)
    finally:
        servers.stop()
    finished = datetime.now(UTC)
    env["load_average_at_end"] = list(os.getloadavg())
    results: dict[str, Any] = {
        "schema": "connman-bench/1",
        "quick": plan.quick,
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - t0, 2),
        "command": _command(),
        "backends": names,
        "environment": env,
        "servers": {"versions": server_versions, "sources": servers.sources},
        "plan": {**{k: v for k, v in asdict(plan).items()
                    if k not in ("ops", "sweep", "overrides")},
                 "ops": {str(k): v for k, v in plan.ops.items()},
                 "overrides": {k: {str(c): n for c, n in v.items()}
                               for k, v in plan.overrides.items()},
                 "sweep_pool": {**asdict(plan.sweep), "max_size": plan.sweep.max_size}},
        "notes": [SECANTUS_NOTE] if any(BACKENDS[n].family == "mongo" for n in names) else [],
        "failures": rec.failures,
        "skipped": rec.skipped,
        "samples": rec.samples,
        "exhaustion": rec.exhaustion,
        "bursts": rec.bursts,
        "cold_start": {"pools": cold_pools, "reps": rec.cold},
    }
    return write_report(results, Path(out), started)


def _command() -> str:
    prog = Path(sys.argv[0]).name
    if prog == "__main__.py":
        prog = "python -m connman.bench"
    return " ".join([prog, *sys.argv[1:]])


def run(quick: bool = False, backends: Sequence[str] | None = None,
        out: Path = Path("benchmarks/results"),
        urls: Mapping[str, str] | Sequence[str] | None = None,
        repetitions: int | None = None, progress: bool = True,
        scenarios: Sequence[str] | None = None) -> Path:
    """Run the suite (starting throwaway servers as needed); returns the results directory.

    Writes `<out>/<UTC timestamp>/` and a copy in `<out>/latest/`: results.json, results.md and
    PNG plots. Servers come from `urls` (kind -> URL), `CONNMAN_TEST_<KIND>_URL`, or are started.
    """
    return asyncio.run(arun(quick, backends, out, urls, repetitions, progress, scenarios))

