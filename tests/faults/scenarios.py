"""The fault scenarios: each an async function of an `Env` that returns a figures dict.

Every scenario runs the app of `app.py` under uvicorn (`serve`), puts HTTP load on it from the
worker process of `load.py`, injects its fault on the real server (restart, kill, network cut,
failpoint, ...), lifts it, and measures:

- `requests`, `ok` (2xx), `errors` by status and type, `unexpected` (errors a client cannot act on,
  or errors outside the fault window, see `analyse`);
- `leaked`: server-side connections of the app above what the pool may keep once the load stopped,
  plus any still open after the app shut down;
- `lost_writes` (acknowledged with 2xx but not in the database, or read back as 404) and
  `phantom_writes` (in the database although the request got an error response);
- `recovery_ms`: from the fault being lifted to the first 2xx of a request started after it;
- `p50_ms`/`p99_ms` of the 2xx responses, and scenario-specific extras.

The server-side count is exact per run: each run tags its connections (PostgreSQL
`application_name`, a MariaDB database of its own, the Mongo `appname`) and counts only those
(`pg_stat_activity`, `information_schema.PROCESSLIST`, SecantusDB's `currentOp`, PgBouncer's
`SHOW CLIENTS`). `check(figures)` lists what is wrong with a run; the tests assert it is empty and
the report prints it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import re
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy import text

from connman import ConnectionManager, PoolStartupError
from connman.testing.proxy import TcpProxy
from connman.testing.servers import Server

from .._targets import Ops, Target, app_name_args, free_port, serve
from .app import Served, build_app
from .frozen import freeze, thaw
from .load import Outcome, Plan, run_load

Figures = dict[str, Any]

SQL_SERVERS = ("postgres", "postgres-psycopg", "mysql-aiomysql", "mysql-asyncmy")
MONGO = ("mongo-pymongo", "mongo-motor")
NETWORKED = (*SQL_SERVERS, *MONGO)
EVERY = (*NETWORKED, "sqlite")


@dataclass
class Env:
    """Where a scenario runs: one backend, the fast (CI) or full size, and extra servers."""

    target: Target
    full: bool = False
    servers: dict[str, Server] = field(default_factory=dict)

    def size(self, ci: Any, full: Any) -> Any:
        return full if self.full else ci


# ---------------------------------------------------------------------------------------------
# The rig: one run's tagged connections, its own table, server-side counting and killing
# ---------------------------------------------------------------------------------------------


def _swap_address(url: str, host: str, port: int) -> str:
    """`url` pointing at host:port instead (user, path and query kept)."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}:{port}"))


class Rig:
    """One scenario run on one backend: URLs, tagged pool config, table, counts, kills."""

    def __init__(self, target: Target, *, through: TcpProxy | None = None,
                 pgbouncer: Server | None = None) -> None:
        self.target = target
        self.tag = uuid.uuid4().hex[:8]
        self.app_name = f"cmfault-{self.tag}"
        self.database = f"cmfault_{self.tag}"
        self.ops = Ops(target)
        self.through = through
        self.pgbouncer = pgbouncer
        self.key_sources: list[Callable[[], Awaitable[set[str]]]] = []
        """Other places the run's writes may have landed (a demoted primary), read by `keys`."""

    @property
    def server(self) -> Server:
        assert self.target.server is not None, "SQLite has no server"
        return self.target.server

    @property
    def monitors(self) -> int:
        """Connections a client keeps besides its pool (PyMongo's one polling monitor)."""
        return 1 if self.target.kind == "mongo" else 0

    def direct_url(self) -> str:
        """The database URL, not through the proxy nor PgBouncer."""
        t = self.target
        if t.driver == "aiosqlite":
            return t.url()
        if t.kind == "mongo":
            return t.url(database=self.database)
        if t.is_postgres:
            return self.server.url(driver=t.driver)
        return self.server.url(driver=t.driver, database=self.database)

    def app_url(self) -> str:
        """The URL the app's pool uses: via PgBouncer or the proxy when the run has one."""
        if self.pgbouncer is not None:
            return self.pgbouncer.url(driver=self.target.driver)
        url = self.direct_url()
        if self.through is not None:
            url = _swap_address(url, "127.0.0.1", self.through.port)
        return url

    def config(self, *, app_name: str | None = None, direct: bool = False,
               **fields: Any) -> dict[str, Any]:
        """The pool config: the target's defaults, `fields`, the URL and the connection tag."""
        cfg = self.target.config(**fields)
        cfg["url"] = self.direct_url() if direct else self.app_url()
        name = app_name or self.app_name
        options = dict(cfg.get("options") or {})
        if self.target.is_postgres:
            args = dict(options.get("connect_args") or {})
            args.update(app_name_args(self.target.driver, name))
            options["connect_args"] = args
            if self.pgbouncer is not None and not direct:
                cfg.setdefault("external_pooler", "pgbouncer")
        elif self.target.kind == "mongo":
            options["appname"] = name
        if options:
            cfg["options"] = options
        return cfg

    # -- setup and teardown ----------------------------------------------------------------------
    async def prepare(self) -> None:
        """Create the run's MariaDB database (the other backends need nothing before the pool)."""
        if self.target.kind == "sql" and self.target.driver in ("aiomysql", "asyncmy"):
            await self._mysql(f"CREATE DATABASE `{self.database}`")

    async def create_table(self, manager: ConnectionManager) -> None:
        async with manager.session("main") as unit:
            if self.target.kind == "sql" and self.target.driver in ("asyncpg", "psycopg"):
                # The test server commits asynchronously (`synchronous_commit=off`): a table
                # created less than ~0.6 s before `server_killed`'s SIGKILL could vanish with it
                # (a fresh clone saw "relation does not exist" when reading the keys after the
                # restart). The run's table must survive; the load's writes keep the fast setting.
                await unit.execute(text("SET LOCAL synchronous_commit = on"))
            await self.ops.create(unit)

    async def keys(self) -> set[str]:
        """Every key in the run's table, read on a fresh connection straight to the database."""
        check = ConnectionManager({"check": self.config(
            app_name=f"{self.app_name}-check", direct=True, size=1, overflow=0, timeout=10,
            connect_timeout=10)})
        async with check, check.session("check") as unit:
            keys = set(await self.ops.keys(unit))
        for source in self.key_sources:
            keys |= await source()
        return keys

    async def cleanup(self) -> None:
        """Drop what the run created; never raises."""
        t = self.target
        with contextlib.suppress(Exception):
            if t.is_postgres:
                import asyncpg

                conn = await asyncpg.connect(self.server.url(), timeout=10)
                try:
                    await conn.execute(f"DROP TABLE IF EXISTS {self.ops.table}")
                finally:
                    await conn.close()
            elif t.kind == "sql" and t.driver != "aiosqlite":
                await self._mysql(f"DROP DATABASE IF EXISTS `{self.database}`")
            elif t.kind == "mongo":
                async with self._mongo() as client:
                    await client.drop_database(self.database)

    # -- server side ---------------------------------------------------------------------------
    async def _mysql(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return await _mysql_on(self.server, sql, *args, autocommit=False)

    @contextlib.asynccontextmanager
    async def _mongo(self) -> AsyncIterator[Any]:
        from pymongo import AsyncMongoClient

        client: Any = AsyncMongoClient(self.server.url(), appname=f"{self.app_name}-probe",
                                       serverSelectionTimeoutMS=10000)
        try:
            yield client
        finally:
            await client.close()

    async def _mongo_ops(self, client: Any) -> list[dict[str, Any]]:
        inprog = (await client.admin.command("currentOp"))["inprog"]
        return [op for op in inprog if op.get("type") == "op" and (
            (op.get("clientMetadata") or {}).get("application") or {}).get("name")
            == self.app_name]

    def _sqlite_handles(self) -> int | None:
        """Open file descriptors of this process on the SQLite file: one per open connection."""
        path = os.path.realpath(self.direct_url().split(":///", 1)[1])
        try:
            fds = os.listdir("/proc/self/fd")
        except OSError:
            return None
        n = 0
        for fd in fds:
            with contextlib.suppress(OSError):
                n += os.readlink(f"/proc/self/fd/{fd}") == path
        return n

    async def count(self) -> int | None:
        """The app's connections as the server sees them now (SQLite: open handles on its file;
        None where that cannot be seen)."""
        t = self.target
        if t.driver == "aiosqlite":
            return self._sqlite_handles()
        if self.pgbouncer is not None:
            return await self._pgbouncer_clients()
        if t.is_postgres:
            import asyncpg

            conn = await asyncpg.connect(self.server.url(), timeout=10)
            try:
                return int(await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    self.app_name))
            finally:
                await conn.close()
        if t.kind == "sql":
            rows = await self._mysql("SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                                     "WHERE DB = %s", self.database)
            return int(rows[0][0])
        async with self._mongo() as client:
            return len(await self._mongo_ops(client))

    async def _pgbouncer_clients(self) -> int:
        from connman.testing.servers import _pg_tool

        assert self.pgbouncer is not None
        proc = await asyncio.create_subprocess_exec(
            _pg_tool("psql"), "-X", "-w", "-A", "-F", "|", "-h", self.pgbouncer.host,
            "-p", str(self.pgbouncer.port), "-U", "postgres", "-d", "pgbouncer",
            "-c", "SHOW CLIENTS", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, "PGCONNECT_TIMEOUT": "5"})
        out, err = await asyncio.wait_for(proc.communicate(), 15)
        if proc.returncode != 0:
            raise RuntimeError(f"SHOW CLIENTS failed: {err.decode(errors='replace')}")
        lines = out.decode().splitlines()
        column = lines[0].split("|").index("application_name")
        return sum(1 for line in lines[1:]
                   if "|" in line and line.split("|")[column] == self.app_name)

    async def kill(self) -> int:
        """Terminate, server-side, the app's connections; returns how many were killed."""
        t = self.target
        if t.is_postgres:
            import asyncpg

            conn = await asyncpg.connect(self.server.url(), timeout=10)
            try:
                return len(await conn.fetch(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = $1", self.app_name))
            finally:
                await conn.close()
        if t.kind == "sql":
            import pymysql

            rows = await self._mysql("SELECT ID FROM information_schema.PROCESSLIST "
                                     "WHERE DB = %s", self.database)
            for (pid,) in rows:
                try:
                    await self._mysql(f"KILL {int(pid)}")
                except pymysql.err.OperationalError as exc:
                    if exc.args[0] != 1094:  # Unknown thread id: it ended meanwhile
                        raise
            return len(rows)
        async with self._mongo() as client:
            victims = await self._mongo_ops(client)
            for op in victims:
                await client.admin.command("killOp", op=op["opid"])
            return len(victims)

    async def failpoint(self, mode: Any, **data: Any) -> None:
        """`configureFailPoint failCommand`, scoped to this run's app by `appName`."""
        async with self._mongo() as client:
            await client.admin.command({"configureFailPoint": "failCommand", "mode": mode,
                                        "data": {"appName": self.app_name, **data}})

    async def settle(self, allowed: int, tracked: Callable[[], int], timeout: float = 5.0
                     ) -> int | None:
        """Poll the server-side count until it is within `allowed` and what the pool tracks."""
        deadline = time.monotonic() + timeout
        while True:
            n = await self.count()
            if n is None or (n <= allowed and n <= tracked()) or time.monotonic() > deadline:
                return n
            await asyncio.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------------------------

CLIENT_TIMEOUTS = {"ReadTimeout", "WriteTimeout", "ConnectTimeout", "PoolTimeout"}


TRANSPORT = {"ReadError", "RemoteProtocolError", "WriteError"}


def category(o: Outcome) -> str:
    """ok | busy | closing | unanswered | unavailable | lost | statement_timeout | server |
    timeout | refused | transport | other."""
    if o.ok:
        return "ok"
    if o.status == 503 and o.label in ("busy", "closing", "unanswered", "unavailable"):
        return o.label if o.retry_after else "other"
    if o.status == 503 and o.label == "lost":
        return "lost"  # ConnectionLost: Retry-After only when nothing was applied
    if o.status == 503 and o.label == "statement_timeout":
        return "statement_timeout"
    if o.status >= 500:
        return "server" if o.label and o.label != "non-json" else "other"
    if o.status == 0:
        if o.label in CLIENT_TIMEOUTS:
            return "timeout"
        if o.label == "ConnectError":
            return "refused"
        if o.label in TRANSPORT:
            return "transport"
    return "other"


def error_key(o: Outcome) -> str:
    if o.status == 0:
        return f"client {o.label}"
    if o.status == 503:
        return f"503 {o.label}" + ("" if o.retry_after else " (no Retry-After)")
    return f"{o.status} {o.label}".strip()


def _pct(values: list[float], q: float) -> int | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(len(values) * q))])


def analyse(outs: list[Outcome], *, allowed: set[str], window: tuple[float, float] | None = None,
            served: Served | None = None, busy_grace: float = 0.0) -> Figures:
    """Count outcomes; an error is unexpected unless its category is allowed and, when the run
    had a fault window, it overlapped the fault (from its start to recovery).

    A 503 "busy" may still come `busy_grace` seconds (the pool's `timeout`) after recovery: the
    requests queued during the fault drain first-in first-out, so one that arrived just after
    recovery can still wait out its `timeout` behind them.

    A connection that broke without a response (`transport`) is excused only when the app's own
    count shows it answered every request: then the answer was lost between uvicorn and httpx
    (seen under heavy CPU contention), which no database pool can cause or cure.
    """
    fig: Figures = {"requests": len(outs), "ok": sum(o.ok for o in outs)}
    if served is not None:
        fig["app_answered"] = served.total
        if served.total >= len(outs):
            allowed = allowed | {"transport"}
        if served.samples:
            fig["error_samples"] = dict(served.samples)
    errors: dict[str, int] = {}
    unexpected: dict[str, int] = {}
    recovery_at: float | None = None
    if window is not None:
        start, lift = window
        firsts = [o.t1 for o in outs if o.ok and o.t0 >= lift]
        recovery_at = min(firsts) if firsts else None
        fig["outage_ms"] = round((lift - start) * 1000)
        fig["recovery_ms"] = round((recovery_at - lift) * 1000) if recovery_at else None
    after = 0
    for o in outs:
        if o.ok:
            continue
        key = error_key(o)
        errors[key] = errors.get(key, 0) + 1
        ok = category(o) in allowed
        if window is not None and ok:
            start, _ = window
            end = recovery_at if recovery_at is not None else float("inf")
            if o.t1 < start:
                ok = False  # failed before the fault began
            elif o.t0 > end + (busy_grace if category(o) == "busy" else 0.0):
                ok = False
                after += 1  # failed after the service had recovered
        if not ok:
            unexpected[key] = unexpected.get(key, 0) + 1
    fig["errors"] = dict(sorted(errors.items(), key=lambda kv: -kv[1]))
    fig["unexpected"] = sum(unexpected.values())
    if unexpected:
        fig["unexpected_detail"] = unexpected
    if window is not None:
        fig["errors_after_recovery"] = after
    lat = [(o.t1 - o.t0) * 1000 for o in outs if o.ok]
    fig["p50_ms"] = _pct(lat, 0.50)
    fig["p99_ms"] = _pct(lat, 0.99)
    if outs:
        fig["duration_s"] = round(max(o.t1 for o in outs) - min(o.t0 for o in outs), 2)
    return fig


def write_integrity(outs: list[Outcome], keys: set[str], written: set[str] | None = None
                    ) -> Figures:
    """Acknowledged writes missing (or read back as 404), and failed writes present.

    `written`: keys whose handler finished its insert (`Served.written`), so that a
    `StatementTimeout` (503 without Retry-After) on one of them came from its COMMIT. A
    `ConnectionLost` without Retry-After is a COMMIT cut off (outcome unknown); with Retry-After
    nothing was applied, so finding its write is a phantom.
    """
    written = written or set()

    def at_commit_error(o: Outcome) -> bool:
        # connman's 503 without Retry-After says "outcome unknown": a COMMIT the server may have
        # applied before the link broke (ConnectionLost), or a statement deadline after the insert.
        return o.label.endswith(" at commit") or (o.label == "statement_timeout"
                                                   and o.key in written) or (
            o.label == "lost" and not o.retry_after)

    acked = {o.key for o in outs if o.method == "POST" and o.ok}
    failed = {o.key for o in outs if o.method == "POST" and o.status >= 400
              and not at_commit_error(o)}
    at_commit = {o.key for o in outs if o.method == "POST" and at_commit_error(o)}
    unknown = {o.key for o in outs if o.method == "POST" and o.status == 0}
    missing_reads = {o.key for o in outs if o.method == "GET" and o.status == 404}
    return {"writes_acked": len(acked),
            "lost_writes": len((acked - keys) | missing_reads),
            "phantom_writes": len(failed & keys),
            # A COMMIT that failed on a broken connection has an unknown outcome: the server may
            # have committed before the link broke. Counted, not a phantom.
            "commit_errors": len(at_commit),
            "commit_errors_applied": len(at_commit & keys),
            "unknown_writes": len(unknown),
            "unknown_applied": len(unknown & keys)}


async def until(cond: Callable[[], bool], timeout: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


@contextlib.contextmanager
def stop_file() -> Iterator[str]:
    """A path the load stops at once it exists (created by the scenario, removed after)."""
    fd, path = tempfile.mkstemp(prefix="connman-fault-stop-")
    os.close(fd)
    os.unlink(path)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _touch(path: str) -> None:
    with open(path, "w"):
        pass


def allowed_connections(rig: Rig, cfg: dict[str, Any]) -> int:
    """What the pool may keep open once idle: up to `size + overflow` until `overflow_idle`
    (every backend), plus the Mongo client's monitor. A leak still shows against `pool_size`."""
    return int(cfg["size"]) + int(cfg["overflow"]) + (
        rig.monitors if rig.target.kind == "mongo" else 0)


async def finish(fig: Figures, rig: Rig, manager: ConnectionManager, cfg: dict[str, Any],
                 outs: list[Outcome] | None = None) -> None:
    """After the load, while the app still runs: settled count, leaks, and pool state."""
    allowed = allowed_connections(rig, cfg)
    n = await rig.settle(allowed, lambda: manager.stats("main")["pool_size"] + rig.monitors)
    stats = manager.stats("main")
    fig["server_conns_after"] = n
    fig["pool_size_after"] = stats["pool_size"]
    tracked = stats["pool_size"] + rig.monitors
    fig["leaked"] = 0 if n is None else max(0, n - allowed, n - tracked)
    fig["active_after"] = stats["requests_active"]
    fig["waiting_after"] = stats["requests_waiting"]
    fig["connections_lost"] = stats["connections_lost"]


async def closed_count(rig: Rig, timeout: float = 2.0) -> int | None:
    """The app's server-side connections once it shut down (polled down to 0)."""
    deadline = time.monotonic() + timeout
    while True:
        n = await rig.count()
        if not n or time.monotonic() > deadline:
            return n
        await asyncio.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# One fault under load
# ---------------------------------------------------------------------------------------------


@dataclass
class Live:
    """The running app of a scenario."""

    rig: Rig
    manager: ConnectionManager
    served: Served
    base: str
    proxy: TcpProxy | None = None
    extra: Figures = field(default_factory=dict)
    """Figures the fault adds (merged into the run's)."""


Fault = Callable[[Live], Awaitable[tuple[float, float]]]


Setup = Callable[["Rig", dict[str, Any], "TcpProxy | None"], Awaitable[None]]


async def fault_under_load(env: Env, fault: Fault, *, proxy: bool = False,
                           pgbouncer: bool = False, allowed: set[str] | None = None,
                           concurrency: int | None = None, pre: int | None = None,
                           post: int | None = None, setup: Setup | None = None,
                           table_first: bool = False, write_recovery: bool = False,
                           read_path: str = "/items", write_ratio: float = 0.5,
                           **cfg_fields: Any) -> Figures:
    """Load the app, run `fault` once `pre` requests were served, stop `post` 2xx after it lifted.

    `fault(live)` returns (when the fault began, when it was lifted). `setup(rig, cfg, proxy)`
    runs once the run's database exists, before the app starts (it may change `cfg`);
    `table_first` creates the table on a connection of its own before that, for a fault the app
    starts into. `write_recovery` adds `write_recovery_ms`: from the lift to the first 2xx write
    started after it (for a fault that refuses writes only). `read_path`: the route of the reads.
    """
    prx = TcpProxy(env.target.server.host, env.target.server.port).start() if proxy else None
    try:
        rig = Rig(env.target, through=prx,
                  pgbouncer=env.servers["pgbouncer"] if pgbouncer else None)
        fields: dict[str, Any] = {"size": 2, "overflow": 6, "timeout": 5.0, "connect_timeout": 3.0}
        fields.update(cfg_fields)
        cfg = rig.config(**fields)
        await rig.prepare()
        try:
            if table_first:
                maker = ConnectionManager({"main": rig.config(
                    app_name=f"{rig.app_name}-setup", direct=True, size=1, overflow=0)})
                async with maker:
                    await rig.create_table(maker)
            if setup is not None:
                await setup(rig, cfg, prx)
            return await _fault_run(env, rig, cfg, fault, prx,
                                    allowed or {"server", "unavailable", "lost"},
                                    concurrency or env.size(16, 32), pre or env.size(40, 300),
                                    post or env.size(40, 400), create_table=not table_first,
                                    write_recovery=write_recovery, read_path=read_path,
                                    write_ratio=write_ratio)
        finally:
            await rig.cleanup()
    finally:
        if prx is not None:
            prx.stop()


async def _fault_run(env: Env, rig: Rig, cfg: dict[str, Any], fault: Fault,
                     prx: TcpProxy | None, allowed: set[str], concurrency: int, pre: int,
                     post: int, *, create_table: bool = True, write_recovery: bool = False,
                     read_path: str = "/items", write_ratio: float = 0.5) -> Figures:
    manager = ConnectionManager({"main": cfg})
    app = build_app(manager, rig.ops)
    served: Served = app.state.served
    fig: Figures = {}
    with stop_file() as stop:
        async with serve(app) as base:
            if create_table:
                await rig.create_table(manager)
            fig["server_conns_before"] = await rig.count()
            plan = Plan(base, requests=200_000, concurrency=concurrency, prefix=rig.tag,
                        max_seconds=env.size(40, 120), stop_file=stop, pace=0.005,
                        read_path=read_path, write_ratio=write_ratio)
            load = asyncio.ensure_future(run_load(plan))
            try:
                await until(lambda: served.total >= pre or load.done(), 30)
                live = Live(rig, manager, served, base, prx)
                start, lift = await fault(live)
                fig.update(live.extra)
                ok_at_lift = served.ok
                await until(lambda: served.ok >= ok_at_lift + post or load.done(), 30)
            finally:
                _touch(stop)
                outs = await load
            fig.update(analyse(outs, allowed=allowed, window=(start, lift), served=served,
                               busy_grace=float(cfg["timeout"])))
            if write_recovery:
                firsts = [o.t1 for o in outs if o.ok and o.method == "POST" and o.t0 >= lift]
                fig["write_recovery_ms"] = round((min(firsts) - lift) * 1000) if firsts else None
            if outs:
                fig["longest_ms"] = round(max(o.t1 - o.t0 for o in outs) * 1000)
            await finish(fig, rig, manager, cfg)
        fig["open_after_close"] = await closed_count(rig)
    fig["leaked"] += fig["open_after_close"] or 0
    fig.update(write_integrity(outs, await rig.keys(), served.written))
    return fig


# ---------------------------------------------------------------------------------------------
# The scenarios
# ---------------------------------------------------------------------------------------------


async def server_restart(env: Env) -> Figures:
    """The database server is restarted (stopped, started on the same port) mid-load."""

    async def fault(live: Live) -> tuple[float, float]:
        start = time.monotonic()
        await asyncio.to_thread(live.rig.server.restart)
        live.extra["forced_stop"] = getattr(live.rig.server, "forced_stop", False)
        return start, time.monotonic()

    fig = await fault_under_load(env, fault)
    if fig.get("forced_stop"):
        # The server did not stop within its stop timeout (SecantusDB's graceful shutdown now
        # and then hangs under load) and was killed: writes it acknowledged but had not yet
        # journaled are lost with the process (w:1, j:false: mongod's default durability too),
        # and reads of them answer 404. That is the database's durability, not connman's.
        fig["lost_in_crash"] = fig.pop("lost_writes", 0)
        detail = fig.get("unexpected_detail") or {}
        fig["unexpected"] = fig.get("unexpected", 0) - detail.pop("404 missing", 0)
    return fig


async def server_killed(env: Env) -> Figures:
    """The database server is killed (SIGKILL) mid-load and started again 1 s later: meanwhile
    every connect is refused. Every failed request must be a typed 503 (`ServerUnavailable`
    with Retry-After, or `ConnectionLost` for a unit cut off), none a 500."""

    async def fault(live: Live) -> tuple[float, float]:
        start = time.monotonic()
        await asyncio.to_thread(live.rig.server.kill)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(live.rig.server.start)
        return start, time.monotonic()

    fig = await fault_under_load(env, fault, allowed={"unavailable", "lost", "busy"})
    # The test servers trade durability for speed (PostgreSQL `synchronous_commit=off`, MariaDB's
    # relaxed log flush): commits acknowledged just before a SIGKILL die with the process, and
    # reads of them answer 404. That is the server's durability setting, not connman's.
    fig["lost_in_crash"] = fig.pop("lost_writes", 0)
    detail = fig.get("unexpected_detail") or {}
    fig["unexpected"] = fig.get("unexpected", 0) - detail.pop("404 missing", 0)
    return fig


async def kill_connections(env: Env) -> Figures:
    """Every connection of the app is killed server-side (pg_terminate_backend, KILL, killOp)."""

    async def fault(live: Live) -> tuple[float, float]:
        start = time.monotonic()
        live.extra["killed"] = await live.rig.kill()
        return start, time.monotonic()

    return await fault_under_load(env, fault)


async def network_cut(env: Env) -> Figures:
    """The network between app and database is cut (live connections reset, new ones refused)
    for a while, then restored."""
    seconds = env.size(0.5, 2.0)

    async def fault(live: Live) -> tuple[float, float]:
        assert live.proxy is not None
        start = time.monotonic()
        live.proxy.cut()
        await asyncio.sleep(seconds)
        live.proxy.restore()
        return start, time.monotonic()

    return await fault_under_load(env, fault, proxy=True)


async def slow_network(env: Env) -> Figures:
    """Latency is added between app and database, then removed; the small pool runs dry, so
    requests may get 503 + Retry-After, never a 500."""
    seconds, delay = env.size(1.0, 3.0), env.size(0.02, 0.05)

    async def fault(live: Live) -> tuple[float, float]:
        assert live.proxy is not None
        start = time.monotonic()
        live.proxy.latency(delay)
        await asyncio.sleep(seconds)
        live.proxy.latency(0)
        return start, time.monotonic()

    return await fault_under_load(env, fault, proxy=True, allowed={"busy"}, size=2, overflow=2,
                                  timeout=0.5)


async def mongo_close_connection(env: Env) -> Figures:
    """`failCommand` with `closeConnection: true` on insert/find for a while."""
    seconds = env.size(0.5, 2.0)

    async def fault(live: Live) -> tuple[float, float]:
        start = time.monotonic()
        await live.rig.failpoint("alwaysOn", failCommands=["insert", "find"],
                                 closeConnection=True)
        try:
            await asyncio.sleep(seconds)
        finally:
            await live.rig.failpoint("off")
        return start, time.monotonic()

    return await fault_under_load(env, fault)


async def mongo_block_connection(env: Env) -> Figures:
    """`failCommand` with `blockConnection`/`blockTimeMS` on insert/find: a stalled server makes
    the small pool run dry, so requests get 503 + Retry-After, never a 500."""
    seconds = env.size(1.0, 3.0)

    async def fault(live: Live) -> tuple[float, float]:
        start = time.monotonic()
        await live.rig.failpoint("alwaysOn", failCommands=["insert", "find"],
                                 blockConnection=True, blockTimeMS=300)
        try:
            await asyncio.sleep(seconds)
        finally:
            await live.rig.failpoint("off")
        return start, time.monotonic()

    return await fault_under_load(env, fault, allowed={"busy"}, size=2, overflow=2, timeout=0.5)


async def pgbouncer_restart(env: Env) -> Figures:
    """PgBouncer (transaction mode) in front of PostgreSQL is restarted mid-load."""

    async def fault(live: Live) -> tuple[float, float]:
        start = time.monotonic()
        await asyncio.to_thread(env.servers["pgbouncer"].restart)
        return start, time.monotonic()

    return await fault_under_load(env, fault, pgbouncer=True)


# A silent server or link: every request must still end within its bound. Gate wait, then a
# connect or pre-ping, then the write and its COMMIT: each bounded by one of these seconds.
SILENT_LIMITS = {"timeout": 1.0, "connect_timeout": 1.0, "statement_timeout": 1.0}
SILENT_SLACK_S = 5.0
"""Added to the bound: scheduling on a loaded machine and the HTTP hop, never a missing deadline."""


def _silent_bound_ms() -> int:
    t = SILENT_LIMITS
    return round((t["timeout"] + t["connect_timeout"] + 2 * t["statement_timeout"]
                  + SILENT_SLACK_S) * 1000)


def _silent_allowed(env: Env) -> set[str]:
    # 503 + Retry-After (CheckoutTimeout, PoolTimeout) or 503 (StatementTimeout), Mongo too
    # (connman types PyMongo's timeouts). Mongo may also see a connection PyMongo found reset
    # or interrupted when its monitor gave up on the server (AutoReconnect), which connman
    # types as ConnectionLost (503; Retry-After when nothing can have been applied); "server"
    # stays allowed there for a raw driver error no timeout describes. Once PyMongo's monitor
    # has marked the silent server Unknown, server selection fails before anything is sent:
    # ServerUnavailable, 503 + Retry-After ("unavailable"; seen at the full size's 5 s outage).
    allowed = {"busy", "unanswered", "statement_timeout"}
    if env.target.kind == "mongo":
        return allowed | {"lost", "server", "unavailable"}
    return allowed


async def _silent(env: Env, fault: Fault, **kw: Any) -> Figures:
    fig = await fault_under_load(env, fault, allowed=_silent_allowed(env),
                                 **{"size": 2, "overflow": 6, **SILENT_LIMITS, **kw})
    fig["bound_ms"] = _silent_bound_ms()
    return fig


async def frozen_server(env: Env) -> Figures:
    """The database server's processes are frozen (SIGSTOP: sockets stay open, nothing answers),
    then thawed (SIGCONT). `timeout`, `connect_timeout` and `statement_timeout` are 1 s: every
    request ends within their sum (+5 s) with a 503 (+ Retry-After when nothing ran), and the next ones
    succeed after the thaw."""
    seconds = env.size(2.0, 5.0)

    async def fault(live: Live) -> tuple[float, float]:
        start = time.monotonic()
        pids = freeze(live.rig.server)
        try:
            await asyncio.sleep(seconds)
        finally:
            thaw(pids)
        return start, time.monotonic()

    return await _silent(env, fault)


async def frozen_pgbouncer(env: Env) -> Figures:
    """PgBouncer (transaction mode) in front of PostgreSQL is frozen (SIGSTOP), then thawed; the
    same bounds as for a frozen server."""
    seconds = env.size(2.0, 5.0)

    async def fault(live: Live) -> tuple[float, float]:
        start = time.monotonic()
        pids = freeze(env.servers["pgbouncer"])
        try:
            await asyncio.sleep(seconds)
        finally:
            thaw(pids)
        return start, time.monotonic()

    fig = await fault_under_load(env, fault, pgbouncer=True, allowed=_silent_allowed(env),
                                 size=2, overflow=6, **SILENT_LIMITS)
    fig["bound_ms"] = _silent_bound_ms()
    return fig


async def blackhole(env: Env) -> Figures:
    """The link is black-holed (TcpProxy keeps every socket open and forwards nothing; new
    connections are accepted and reach nothing), then restored; the same bounds as for a frozen
    server."""
    seconds = env.size(2.0, 5.0)

    async def fault(live: Live) -> tuple[float, float]:
        assert live.proxy is not None
        start = time.monotonic()
        live.proxy.blackhole()
        try:
            await asyncio.sleep(seconds)
        finally:
            live.proxy.restore()
        return start, time.monotonic()

    return await _silent(env, fault, proxy=True)


# ---------------------------------------------------------------------------------------------
# Outages that heal: a late server, a full one, a locked SQLite, a demoted primary, a step-down
# ---------------------------------------------------------------------------------------------


async def late_server(env: Env) -> Figures:
    """An optional pool (`required: false`) starts while its server refuses connections (the
    proxy cut): the app starts anyway, its requests answer 503 + Retry-After, and the pool
    opens in the background once the server answers, without a restart. `recovery_ms` is from
    the server answering again to the first 2xx (target: `connect_timeout` + one healing
    tick)."""
    from connman._healing import HEAL_TICK

    seconds = env.size(1.5, 3.0)
    connect_timeout = 1.0
    began: list[float] = []

    async def cut(rig: Rig, cfg: dict[str, Any], prx: TcpProxy | None) -> None:
        assert prx is not None
        prx.cut()
        began.append(time.monotonic())

    async def fault(live: Live) -> tuple[float, float]:
        assert live.proxy is not None
        live.extra["down_at_start"] = live.manager.pool("main").outage is not None
        await asyncio.sleep(max(0.0, began[0] + seconds - time.monotonic()))
        live.proxy.restore()
        return began[0], time.monotonic()

    fig = await fault_under_load(env, fault, proxy=True, setup=cut, table_first=True,
                                 allowed={"unavailable", "busy"}, pre=env.size(40, 200),
                                 required=False, connect_timeout=connect_timeout)
    fig["heal_target_ms"] = round((connect_timeout + HEAL_TICK) * 1000)
    return fig


async def _pg(server: Server, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server.url(), timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def server_full(env: Env) -> Figures:
    """The server refuses the app more connections (a role's CONNECTION LIMIT, a MariaDB
    user's MAX_USER_CONNECTIONS, lowered to 1, as when other clients took every slot) while the
    app's connections are killed: the pool keeps serving on the one connection it gets back,
    every refused connect is a 503 + Retry-After (`ServerUnavailable(kind="full")`), and the
    limit lifted, the pool grows again. The limit is on the app's own login, so the server
    stays usable for everyone else."""
    seconds = env.size(1.5, 3.0)
    login = f"cmfull{uuid.uuid4().hex[:6]}"
    t = env.target
    server = t.server
    assert server is not None
    rigs: list[Rig] = []

    async def limit(rig: Rig, n: int) -> None:
        if t.is_postgres:
            await _pg(server, f"ALTER ROLE {login} CONNECTION LIMIT {n}")
        else:  # MariaDB: 0 is "no limit"
            await rig._mysql(f"ALTER USER '{login}'@'127.0.0.1' "
                             f"WITH MAX_USER_CONNECTIONS {max(n, 0)}")

    async def make_login(rig: Rig, cfg: dict[str, Any], prx: TcpProxy | None) -> None:
        rigs.append(rig)
        if t.is_postgres:
            await _pg(server, f"CREATE ROLE {login} LOGIN")
            await _pg(server, f"GRANT CREATE, USAGE ON SCHEMA public TO {login}")
            cfg["url"] = cfg["url"].replace("postgres@", f"{login}@", 1)
        else:
            await rig._mysql(f"CREATE USER '{login}'@'127.0.0.1'")
            await rig._mysql(f"GRANT ALL ON `{rig.database}`.* TO '{login}'@'127.0.0.1'")
            cfg["url"] = cfg["url"].replace("root@", f"{login}@", 1)

    async def fault(live: Live) -> tuple[float, float]:
        start = time.monotonic()
        await limit(live.rig, 1)
        try:
            live.extra["killed"] = await live.rig.kill()
            await asyncio.sleep(seconds)
        finally:
            await limit(live.rig, -1)
        return start, time.monotonic()

    try:
        return await fault_under_load(env, fault, setup=make_login,
                                      allowed={"unavailable", "lost", "busy"})
    finally:
        with contextlib.suppress(Exception):
            if t.is_postgres:
                await _pg(server, f"DROP OWNED BY {login}")
                await _pg(server, f"DROP ROLE {login}")
            elif rigs:
                await rigs[0]._mysql(f"DROP USER '{login}'@'127.0.0.1'")


def _write_lock(path: str) -> Any:
    """A sqlite3 connection of its own holding the database's write lock (BEGIN IMMEDIATE)."""
    import sqlite3

    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def _release(conn: Any) -> None:
    conn.execute("ROLLBACK")
    conn.close()


async def sqlite_locked(env: Env) -> Figures:
    """Another writer (a sqlite3 connection outside the pool) holds SQLite's write lock longer
    than the pool's `timeout` (1 s, also sqlite3's lock wait): the app's writes answer 503 +
    Retry-After (`ServerUnavailable(kind="locked")`, nothing committed), its reads go on, and
    writes succeed again once the lock is released."""
    seconds = env.size(2.0, 3.0)

    async def fault(live: Live) -> tuple[float, float]:
        path = live.rig.direct_url().split(":///", 1)[1]
        start = time.monotonic()
        holder = await asyncio.to_thread(_write_lock, path)
        try:
            await asyncio.sleep(seconds)
        finally:
            await asyncio.to_thread(_release, holder)
        return start, time.monotonic()

    # The app's own writers queue for the one write lock too: a small pool and a `timeout` of
    # 1 s keep that wait well inside it outside the fault, even on a loaded machine.
    return await fault_under_load(env, fault, allowed={"unavailable", "busy"},
                                  write_recovery=True, concurrency=8, size=2, overflow=2,
                                  timeout=1.0)


async def mongo_stepdown(env: Env) -> Figures:
    """The primary steps down (`replSetStepDown`, force) for a while and is primary again: the
    app's pool is on a replica-set URL (not a direct connection). Writes refused by the
    secondary (`NotPrimaryError`, nothing applied) answer 503 + Retry-After, and writes succeed
    again once the clients see the primary (`heartbeatFrequencyMS=500`)."""
    seconds = env.size(2, 4)

    async def fault(live: Live) -> tuple[float, float]:
        start = time.monotonic()
        async with live.rig._mongo() as client:
            await client.admin.command({"replSetStepDown": seconds, "force": True})
        await asyncio.sleep(max(0.0, start + seconds - time.monotonic()))
        return start, time.monotonic()

    async def replica_set(rig: Rig, cfg: dict[str, Any], prx: TcpProxy | None) -> None:
        cfg["url"] = cfg["url"] + ("&" if "?" in cfg["url"] else "?") + "replicaSet=secantus"

    # Writes only: reads succeed throughout, so the first 2xx after the window must be a write
    # (the clients see the primary again at their next heartbeat).
    return await fault_under_load(env, fault, setup=replica_set, write_recovery=True,
                                  write_ratio=1.0, allowed={"unavailable", "busy"}, timeout=1.0,
                                  connect_timeout=2.0)


# -- replicas and a demoted primary (PostgreSQL) -------------------------------------------------


async def _pg_count(server: Server, app_name: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(server.url(), timeout=10)
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app_name))
    finally:
        await conn.close()


async def _pg_settled(server: Server, app_name: str, allowed: int, timeout: float = 5.0) -> int:
    """The app's connections on `server`, polled until within `allowed` (or `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        n = await _pg_count(server, app_name)
        if n <= allowed or time.monotonic() > deadline:
            return n
        await asyncio.sleep(0.1)


async def _replica_run(env: Env, fault: Fault, extra_fields: dict[str, Any],
                       allowed: set[str]) -> Figures:
    """Load an app whose pool reads from the replica through a TcpProxy (`GET /replica/{key}`),
    run `fault` (`live.proxy` is the replica's proxy); any connection of the app left open on
    the replica after shutdown counts as leaked too."""
    replica = env.servers["replica"]
    rep_proxy = TcpProxy(replica.host, replica.port).start()

    async def with_replica(rig: Rig, cfg: dict[str, Any], prx: TcpProxy | None) -> None:
        cfg["replicas"] = [_swap_address(replica.url(driver=env.target.driver), "127.0.0.1",
                                         rep_proxy.port)]
        await asyncio.to_thread(replica.wait_replicated)  # the table is there to read

    async def on_replica_proxy(live: Live) -> tuple[float, float]:
        live.proxy = rep_proxy
        live.extra["app_name"] = live.rig.app_name
        return await fault(live)

    try:
        fig = await fault_under_load(env, on_replica_proxy, setup=with_replica,
                                     table_first=True, read_path="/replica", allowed=allowed,
                                     **{"size": 2, "overflow": 4, "read_your_writes": "off",
                                        **extra_fields})
    finally:
        rep_proxy.stop()
    app_name = fig.pop("app_name")
    fig["replica_open_after_close"] = await _pg_settled(replica, app_name, 0, 2.0)
    fig["leaked"] += fig["replica_open_after_close"]
    return fig


async def frozen_replica(env: Env) -> Figures:
    """The replica stops answering (the link to it black-holed: connects hang, queries get no
    reply), then answers again. `connect_timeout` and `statement_timeout` bound the reads it
    held; it is marked down and reads move to the primary; it rejoins when it answers.
    `rejoin_ms`: from the replica answering again to the pool marking it up (target:
    `connect_timeout` + one healing tick)."""
    from connman._healing import HEAL_TICK

    seconds = env.size(2.0, 4.0)
    connect_timeout = 1.0

    async def fault(live: Live) -> tuple[float, float]:
        assert live.proxy is not None
        pool = live.manager.pool("main.replica1")
        start = time.monotonic()
        live.proxy.blackhole()
        try:
            # Marked down by the first read that times out on it (a connect after
            # `connect_timeout`, a query on a pooled connection after `statement_timeout`).
            marked = await until(lambda: pool.outage is not None, seconds + 15)
            live.extra["replica_marked_down_ms"] = (
                round((time.monotonic() - start) * 1000) if marked else None)
            await asyncio.sleep(max(0.0, start + seconds - time.monotonic()))
        finally:
            live.proxy.restore()
        lift = time.monotonic()
        back = await until(lambda: pool.outage is None, 30)
        live.extra["rejoin_ms"] = round((time.monotonic() - lift) * 1000) if back else None
        live.extra["rejoin_target_ms"] = round((connect_timeout + HEAL_TICK) * 1000)
        return start, lift

    return await _replica_run(env, fault, {"connect_timeout": connect_timeout,
                                           "statement_timeout": 2.0, "timeout": 5.0},
                              # "lost": a read whose replica connection broke in the fault
                              # (ConnectionLost, 503; no Retry-After: connman cannot know the
                              # unit only read). Seen twice on psycopg in one fresh clone; which
                              # step broke it (deadline kill, ping) is not pinned down yet.
                              allowed={"statement_timeout", "unanswered", "busy", "lost"})


async def lagging_replica(env: Env) -> Figures:
    """The replica stops replaying (pg_wal_replay_pause, as a long conflicting query does) while
    the app writes, then resumes: with `max_replica_lag` 0.2 s it leaves the read rotation (the
    primary serves the reads) and rejoins once caught up; no request fails. `left_ms`: from the
    pause to the pool taking it out; `rejoin_ms`: from the resume to it being back."""
    import asyncpg

    seconds = env.size(2.0, 4.0)
    replica = env.servers["replica"]

    async def fault(live: Live) -> tuple[float, float]:
        router = live.manager._routers["main"]
        conn = await asyncpg.connect(replica.url(), timeout=10)
        try:
            start = time.monotonic()
            await conn.execute("SELECT pg_wal_replay_pause()")
            try:
                left = await until(lambda: "main.replica1" in router.lagging, seconds + 10)
                live.extra["left_ms"] = round((time.monotonic() - start) * 1000) if left else None
                await asyncio.sleep(max(0.0, start + seconds - time.monotonic()))
            finally:
                await conn.execute("SELECT pg_wal_replay_resume()")
            lift = time.monotonic()
        finally:
            await conn.close()
        back = await until(lambda: "main.replica1" not in router.lagging, 30)
        live.extra["rejoin_ms"] = round((time.monotonic() - lift) * 1000) if back else None
        return start, lift

    return await _replica_run(env, fault, {"max_replica_lag": 0.2}, allowed={"busy"})


async def _mysql_on(server: Server, sql: str, *args: Any,
                    autocommit: bool = True) -> list[tuple[Any, ...]]:
    """`sql` as root on the MariaDB `server`; its rows."""
    import aiomysql

    conn = await aiomysql.connect(host=server.host, port=server.port, user="root",
                                  connect_timeout=10, autocommit=autocommit)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql, args or None)
            return list(await cur.fetchall())
    finally:
        conn.close()


async def demoted_primary(env: Env) -> Figures:
    """A switchover: the primary is demoted (stays up, read-only: PostgreSQL's
    `default_transaction_read_only` set and reloaded, MariaDB's `SET GLOBAL read_only = 1` for a
    login without SUPER), and 0.5 s later the pool's address (a TcpProxy) leads to the new
    primary. Writes refused as read-only are 503 + Retry-After and make the pool discard its
    connections to the old server, so new ones follow the address; nothing waits for `recycle`.
    The old primary is a throwaway server of the scenario's own, the new one the shared server.
    `write_recovery_ms`: from the address leading to the new primary to the first 2xx write."""
    from connman.testing.servers import MariaDBServer, PostgresServer

    seconds = 0.5
    pg = env.target.is_postgres
    new_primary = env.target.server
    assert new_primary is not None
    old: Server = await asyncio.to_thread(
        lambda: (PostgresServer() if pg else MariaDBServer()).start())
    login = f"cmdemo{uuid.uuid4().hex[:6]}"
    rigs: list[Rig] = []
    on_old: set[str] = set()
    ddl = "(k VARCHAR(64) PRIMARY KEY, v INT)"

    async def keys_on_old() -> set[str]:
        rig = rigs[0]
        if pg:
            import asyncpg

            conn = await asyncpg.connect(old.url(), timeout=10)
            try:
                keys = {r[0] for r in await conn.fetch(f"SELECT k FROM {rig.ops.table}")}
            finally:
                await conn.close()
        else:
            keys = {r[0] for r in await _mysql_on(
                old, f"SELECT k FROM `{rig.database}`.{rig.ops.table}")}
        on_old.update(keys)
        return keys

    async def onto_old(rig: Rig, cfg: dict[str, Any], prx: TcpProxy | None) -> None:
        assert prx is not None
        rigs.append(rig)
        if pg:
            await _pg(old, f"CREATE TABLE {rig.ops.table} {ddl}")
        else:
            await _mysql_on(old, f"CREATE DATABASE `{rig.database}`")
            await _mysql_on(old, f"CREATE TABLE `{rig.database}`.{rig.ops.table} {ddl}")
            for server in (old, new_primary):  # read_only binds a login without SUPER only
                await _mysql_on(server, f"CREATE USER '{login}'@'127.0.0.1'")
                await _mysql_on(server, f"GRANT ALL ON `{rig.database}`.* "
                                        f"TO '{login}'@'127.0.0.1'")
            cfg["url"] = cfg["url"].replace("root@", f"{login}@", 1)
        rig.key_sources.append(keys_on_old)
        prx.target_port = old.port

    async def fault(live: Live) -> tuple[float, float]:
        assert live.proxy is not None
        start = time.monotonic()
        if pg:
            await _pg(old, "ALTER SYSTEM SET default_transaction_read_only = on")
            await _pg(old, "SELECT pg_reload_conf()")
        else:
            await _mysql_on(old, "SET GLOBAL read_only = 1")
        await asyncio.sleep(seconds)
        live.proxy.target_port = new_primary.port
        return start, time.monotonic()

    try:
        fig = await fault_under_load(env, fault, proxy=True, setup=onto_old, table_first=True,
                                     write_recovery=True, write_ratio=1.0,
                                     allowed={"unavailable", "busy"})
        # Writes acknowledged before the switchover are on the old primary (`keys_on_old`).
        fig["writes_on_old_primary"] = len(on_old)
        rig = rigs[0]
        if pg:
            left = await _pg_settled(old, rig.app_name, 0, 2.0)
        else:
            left = int((await _mysql_on(old, "SELECT COUNT(*) FROM "
                                             "information_schema.PROCESSLIST WHERE DB = %s",
                                        rig.database))[0][0])
        fig["old_primary_open_after_close"] = left
        fig["leaked"] += left
        return fig
    finally:
        if not pg:
            with contextlib.suppress(Exception):
                await _mysql_on(new_primary, f"DROP USER '{login}'@'127.0.0.1'")
        await asyncio.to_thread(old.stop)


async def cancellation_storm(env: Env) -> Figures:
    """Thousands of /slow requests whose clients give up mid-query or while queued for a
    connection, then tasks cancelled while waiting for one; the pool must end empty and serve."""
    rig = Rig(env.target)
    cfg = rig.config(size=2, overflow=2, timeout=10.0)
    await rig.prepare()
    try:
        manager = ConnectionManager({"main": cfg})
        app = build_app(manager, rig.ops, cancel_on_disconnect=True)
        served: Served = app.state.served
        fig: Figures = {}
        async with serve(app) as base:
            await rig.create_table(manager)
            plan = Plan(base, requests=env.size(300, 5000), concurrency=env.size(100, 200),
                        prefix=rig.tag, slow=0.2, timeout_jitter=(0.01, 0.4),
                        max_seconds=env.size(40, 300))
            outs = await run_load(plan)
            fig.update(analyse(outs, allowed={"timeout"}, served=served))
            fig["handlers_cancelled"] = served.cancelled
            fig["tasks_cancelled"] = await _cancel_waiters(manager, rig.ops,
                                                           env.size(200, 2000))
            await until(lambda: manager.stats("main")["requests_active"] == 0
                        and manager.stats("main")["requests_waiting"] == 0, 5)
            fig["serves_after"] = await _serves_again(base, rig.tag, 20)
            await finish(fig, rig, manager, cfg)
        fig["open_after_close"] = await closed_count(rig)
        fig["leaked"] += fig["open_after_close"] or 0
        return fig
    finally:
        await rig.cleanup()


async def _cancel_waiters(manager: ConnectionManager, ops: Ops, n: int) -> int:
    """`n` tasks each take a session for a 50 ms query but are cancelled at a random moment:
    most while queued for a connection, some mid-query. Returns how many were cancelled."""
    rng = random.Random(7)

    async def hold() -> None:
        async with manager.session("main") as unit:
            await ops.slow(unit, 0.05)

    async def one() -> bool:
        try:
            await asyncio.wait_for(hold(), rng.uniform(0.001, 0.3))
        except TimeoutError:
            return True
        return False

    return sum(await asyncio.gather(*(one() for _ in range(n))))


async def _serves_again(base: str, prefix: str, n: int) -> int:
    """How many of `n` sequential writes then reads succeed."""
    good = 0
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        for i in range(n):
            key = f"{prefix}-after-{i}"
            w = await client.post(f"/items/{key}")
            r = await client.get(f"/items/{key}")
            good += w.is_success and r.is_success
    return good


async def sustained_load(env: Env) -> Figures:
    """Many requests at concurrency 200 on a pool of 10 + overflow 20: no error, no leak, p99
    bounded."""
    rig = Rig(env.target)
    cfg = rig.config(size=10, overflow=20, timeout=30.0)
    await rig.prepare()
    try:
        manager = ConnectionManager({"main": cfg})
        app = build_app(manager, rig.ops)
        fig: Figures = {}
        async with serve(app) as base:
            await rig.create_table(manager)
            plan = Plan(base, requests=env.size(600, 20_000), concurrency=200, prefix=rig.tag,
                        timeout=60, max_seconds=env.size(90, 900))
            outs = await run_load(plan)
            fig.update(analyse(outs, allowed=set(), served=app.state.served))
            fig["throughput_rps"] = round(fig["requests"] / max(fig["duration_s"], 1e-9))
            stats = manager.stats("main")
            fig["queued"] = stats["requests_queued"]
            await finish(fig, rig, manager, cfg)
        fig["open_after_close"] = await closed_count(rig)
        fig["leaked"] += fig["open_after_close"] or 0
        fig.update(write_integrity(outs, await rig.keys()))
        return fig
    finally:
        await rig.cleanup()


async def startup_database_down(env: Env) -> Figures:
    """The app starts while its database refuses connections, then while it accepts but never
    answers: startup fails within `connect_timeout` (+1 s), naming the pool."""
    connect_timeout = 1.0
    fig: Figures = {"connect_timeout_ms": round(connect_timeout * 1000)}
    t = env.target
    if t.driver == "aiosqlite":
        assert t.sqlite_dir is not None
        url = f"sqlite+aiosqlite:///{t.sqlite_dir}/no-such-dir/app.db"
        fig.update(await _startup_fails({"url": url, "connect_timeout": connect_timeout}))
        return fig
    with TcpProxy(t.server.host, t.server.port) as prx:  # type: ignore[union-attr]
        rig = Rig(t, through=prx)
        await rig.prepare()
        try:
            prx.cut()
            refused = await _startup_fails(rig.config(connect_timeout=connect_timeout))
            fig.update(refused)
            prx.restore()
            prx.latency(60)  # accepts, never answers in time
            hung = await _startup_fails(rig.config(connect_timeout=connect_timeout))
            fig.update({f"hang_{k}": v for k, v in hung.items()})
            prx.cut()  # reset what the hung attempt left behind
            fig["open_after_close"] = await closed_count(rig)
        finally:
            await rig.cleanup()
    fig["leaked"] = fig["open_after_close"] or 0
    return fig


async def _startup_fails(cfg: dict[str, Any]) -> Figures:
    """Start a manager on `cfg`, then the app under uvicorn: both must fail fast, naming it."""
    out: Figures = {}
    manager = ConnectionManager({"main": cfg})
    t0 = time.monotonic()
    try:
        await manager.open()
    except PoolStartupError as exc:
        out["fail_ms"] = round((time.monotonic() - t0) * 1000)
        out["error"] = type(exc).__name__
        out["names_pool"] = "'main'" in str(exc)
        out["message"] = str(exc)[:200]
    except Exception as exc:
        out["fail_ms"] = round((time.monotonic() - t0) * 1000)
        out["error"] = f"untyped {type(exc).__name__}"
        out["names_pool"] = False
        out["message"] = str(exc)[:200]
    else:
        await manager.close()
        out["error"] = "none: the manager opened"
        out["names_pool"] = False
    out.update(await _start_app(cfg))
    return out


async def _start_app(cfg: dict[str, Any]) -> Figures:
    """Start the app under uvicorn with its database down; it must refuse to start.

    uvicorn (0.30+) answers a failed lifespan startup with `sys.exit(3)` from `Server.serve()`.
    `serve()` of tests/_targets.py runs that in a task of its own, whence the SystemExit would
    escape into the test's event loop; so this awaits `serve()` here and catches it.
    """
    import uvicorn

    out: Figures = {"app_started": False, "app_exit_code": None, "app_error": None}
    seen: list[BaseException] = []
    app = build_app(ConnectionManager({"main": cfg}), Ops(_NO_TARGET))
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def recording(a: Any) -> AsyncIterator[Any]:
        try:
            async with inner(a) as state:
                yield state
        except Exception as exc:  # what uvicorn logs before "Application startup failed"
            seen.append(exc)
            raise

    app.router.lifespan_context = recording
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(),
                                           log_level="critical", lifespan="on"))

    async def stop_if_started() -> None:
        while not server.started:
            await asyncio.sleep(0.01)
        out["app_started"] = True
        server.should_exit = True

    watcher = asyncio.ensure_future(stop_if_started())
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(60):
            await server.serve()
    except SystemExit as exc:
        out["app_exit_code"] = exc.code
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    out["app_fail_ms"] = round((time.monotonic() - t0) * 1000)
    if seen:
        out["app_error"] = type(seen[0]).__name__
    out["app_log_names_pool"] = bool(seen) and "'main'" in str(seen[0])
    return out


_NO_TARGET = Target("none", "sql", "none", None)


async def shutdown_in_flight(env: Env) -> Figures:
    """Shutdown while HTTP requests are in flight and a background job holds a session past the
    drain deadline: the requests finish, the job finishes or gets a clear error, the drain ends
    on time, nothing stays open."""
    drain = env.size(0.5, 2.0)
    rig = Rig(env.target)
    cfg = rig.config(size=2, overflow=2, timeout=5.0, drain_timeout=drain)
    await rig.prepare()
    try:
        return await _shutdown_run(rig, cfg, drain)
    finally:
        await rig.cleanup()


async def _shutdown_run(rig: Rig, cfg: dict[str, Any], drain: float) -> Figures:
    manager = ConnectionManager({"main": cfg})
    app = build_app(manager, rig.ops)
    pool = manager.pool("main")
    fig: Figures = {"drain_timeout_ms": round(drain * 1000)}
    job: dict[str, Any] = {}
    holding = asyncio.Event()

    async def background_job() -> None:
        try:
            async with manager.session("main") as unit:
                await rig.ops.select1(unit)
                holding.set()
                await until(lambda: pool.closed, 60)  # shutdown began: hold past the deadline
                await asyncio.sleep(drain + 0.5)
                await rig.ops.insert(unit, f"{rig.tag}-job")
            job["outcome"] = "finished"
        except Exception as exc:
            job["outcome"] = f"error {type(exc).__name__}"
            job["message"] = str(exc)[:160]
        finally:
            holding.set()

    server = serve(app)
    base = await server.__aenter__()
    exited = False
    try:
        await rig.create_table(manager)
        job_task = asyncio.ensure_future(background_job())
        await holding.wait()
        client = httpx.AsyncClient(base_url=base, timeout=30)
        inflight = [asyncio.ensure_future(client.get("/slow", params={"seconds": 0.6}))
                    for _ in range(6)]
        await until(lambda: pool.stats()["requests_active"] == 4, 5)  # 1 job + 3 requests
        t_exit = time.monotonic()
        closing_at: list[float] = []

        async def watch_closing() -> None:
            while not pool.closed:
                await asyncio.sleep(0.005)
            closing_at.append(time.monotonic())

        watcher = asyncio.ensure_future(watch_closing())
        exiting = asyncio.ensure_future(server.__aexit__(None, None, None))
        exited = True
        await asyncio.sleep(0.1)
        async with httpx.AsyncClient(base_url=base, timeout=5) as late_client:
            try:
                late = await late_client.get("/items/x")
                fig["late_request"] = f"{late.status_code}"
            except httpx.HTTPError as exc:
                fig["late_request"] = f"client {type(exc).__name__}"
        await exiting
        t_done = time.monotonic()
        await watcher
        results = await asyncio.gather(*inflight, return_exceptions=True)
        await client.aclose()
        await job_task
    finally:
        if not exited:
            await server.__aexit__(None, None, None)
    codes = [r.status_code if isinstance(r, httpx.Response) else type(r).__name__
             for r in results]
    fig["requests"] = len(codes)
    fig["ok"] = sum(1 for c in codes if c == 200)
    fig["errors"] = {str(c): codes.count(c) for c in set(codes) if c != 200}
    fig["shutdown_ms"] = round((t_done - t_exit) * 1000)
    fig["drain_ms"] = round((t_done - closing_at[0]) * 1000) if closing_at else None
    fig["job"] = job.get("outcome")
    if "message" in job:
        fig["job_message"] = job["message"]
    fig["active_after"] = pool.stats()["requests_active"]
    fig["open_after_close"] = await closed_count(rig)
    fig["leaked"] = fig["open_after_close"] or 0
    return fig


# ---------------------------------------------------------------------------------------------
# Registry and verdicts
# ---------------------------------------------------------------------------------------------


def _common(fig: Figures) -> list[str]:
    problems = []
    for key in ("unexpected", "leaked", "lost_writes", "phantom_writes", "active_after",
                "waiting_after", "errors_after_recovery"):
        if fig.get(key):
            problems.append(f"{key}={fig[key]}")
    if "recovery_ms" in fig and fig["recovery_ms"] is None:
        problems.append("never recovered: no 2xx after the fault was lifted")
    return problems


def _check_bounded(fig: Figures) -> list[str]:
    problems = _common(fig)
    if fig.get("longest_ms") is None or fig["longest_ms"] > fig["bound_ms"]:
        problems.append(f"longest request {fig.get('longest_ms')} ms > bound {fig['bound_ms']} ms")
    if not fig.get("errors"):
        problems.append("no request failed: the fault did not bite")
    return problems


def _check_storm(fig: Figures) -> list[str]:
    problems = _common(fig)
    if fig.get("serves_after") != 20:
        problems.append(f"serves_after={fig.get('serves_after')}/20")
    if not fig.get("handlers_cancelled"):
        problems.append("no handler was cancelled: the storm did not storm")
    return problems


def _check_sustained(fig: Figures) -> list[str]:
    problems = _common(fig)
    if fig["ok"] != fig["requests"]:
        problems.append(f"only {fig['ok']}/{fig['requests']} 2xx")
    p50, p99 = fig.get("p50_ms") or 0, fig.get("p99_ms") or 0
    if p99 > 5 * p50 + 2000:
        problems.append(f"p99 {p99} ms unbounded vs p50 {p50} ms")
    return problems


def _check_startup(fig: Figures) -> list[str]:
    problems = []
    budget = fig["connect_timeout_ms"] + 1500
    for prefix in ("", "hang_"):
        if f"{prefix}error" not in fig:
            continue
        if fig[f"{prefix}error"] != "PoolStartupError":
            problems.append(f"{prefix}error={fig[f'{prefix}error']}")
        if not fig[f"{prefix}names_pool"]:
            problems.append(f"{prefix}message does not name the pool")
        if fig[f"{prefix}fail_ms"] > budget:
            problems.append(f"{prefix}fail_ms={fig[f'{prefix}fail_ms']} > {budget}")
        if fig[f"{prefix}app_started"]:
            problems.append(f"{prefix}app started with its database down")
        if fig[f"{prefix}app_fail_ms"] > budget:
            problems.append(f"{prefix}app_fail_ms={fig[f'{prefix}app_fail_ms']} > {budget}")
        if not fig[f"{prefix}app_log_names_pool"]:
            problems.append(f"{prefix}uvicorn's startup failure log does not name the pool")
    if fig.get("leaked"):
        problems.append(f"leaked={fig['leaked']}")
    return problems


def _check_shutdown(fig: Figures) -> list[str]:
    problems = []
    if fig["ok"] != fig["requests"]:
        problems.append(f"in-flight requests failed: {fig['errors']}")
    if not str(fig.get("late_request", "")).startswith(("client ConnectError", "503")):
        problems.append(f"late request got {fig.get('late_request')}")
    if fig["drain_ms"] is None or fig["drain_ms"] > fig["drain_timeout_ms"] + 500:
        problems.append(f"drain took {fig['drain_ms']} ms (deadline {fig['drain_timeout_ms']})")
    if fig.get("active_after"):
        problems.append(f"active_after={fig['active_after']}")
    if fig.get("leaked"):
        problems.append(f"{fig['leaked']} connection(s) still open after shutdown")
    return problems


def _bites(label: str) -> Callable[[Figures], list[str]]:
    """The common checks, and the fault must have shown: some 503 `label` with Retry-After."""

    def check(fig: Figures) -> list[str]:
        problems = _common(fig)
        if not any(k == f"503 {label}" for k in fig.get("errors") or {}):
            problems.append(f"no 503 {label} with Retry-After: the fault did not bite")
        return problems

    return check


def _replica_check(seen: str) -> Callable[[Figures], list[str]]:
    """The common checks; the pool must have taken the replica out (`seen`) and back in."""

    def check(fig: Figures) -> list[str]:
        problems = _common(fig)
        if fig.get(seen) is None:
            problems.append(f"{seen}: the pool never took the replica out of rotation")
        if fig.get("rejoin_ms") is None:
            problems.append("the replica never rejoined the rotation")
        return problems

    return check


@dataclass(frozen=True)
class Scenario:
    """One scenario: its function, the backends it applies to, extra servers, its checks."""

    name: str
    title: str
    run: Callable[[Env], Awaitable[Figures]]
    targets: tuple[str, ...]
    needs: tuple[str, ...] = ()
    check: Callable[[Figures], list[str]] = _common


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("server_restart", "Server restarted mid-load", server_restart, NETWORKED),
    Scenario("server_killed", "SQL server killed mid-load (connects refused), started 1 s later",
             server_killed, SQL_SERVERS),
    Scenario("kill_connections", "All the app's connections killed server-side",
             kill_connections, NETWORKED),
    Scenario("network_cut", "Network cut, then restored (TcpProxy)", network_cut, NETWORKED),
    Scenario("slow_network", "Added network latency (TcpProxy)", slow_network, NETWORKED),
    Scenario("mongo_close_connection", "failCommand closeConnection", mongo_close_connection,
             MONGO),
    Scenario("mongo_block_connection", "failCommand blockConnection/blockTimeMS",
             mongo_block_connection, MONGO),
    Scenario("pgbouncer_restart", "PgBouncer (transaction mode) restarted mid-load",
             pgbouncer_restart, ("postgres",), needs=("pgbouncer",)),
    Scenario("frozen_server", "Server frozen (SIGSTOP), then thawed", frozen_server,
             NETWORKED, check=_check_bounded),
    Scenario("frozen_pgbouncer", "PgBouncer frozen (SIGSTOP), then thawed", frozen_pgbouncer,
             ("postgres",), needs=("pgbouncer",), check=_check_bounded),
    Scenario("blackhole", "Link black-holed (TcpProxy), then restored", blackhole, NETWORKED,
             check=_check_bounded),
    Scenario("late_server", "Optional pool, its server down at startup, then up (heals in "
             "the background)", late_server, NETWORKED, check=_bites("unavailable")),
    Scenario("server_full", "Server full: the app's login limited to 1 connection, its "
             "connections killed", server_full, SQL_SERVERS, check=_bites("unavailable")),
    Scenario("sqlite_locked", "SQLite write lock held by another writer past `timeout`",
             sqlite_locked, ("sqlite",), check=_bites("unavailable")),
    Scenario("mongo_stepdown", "Mongo primary steps down (replSetStepDown), primary again",
             mongo_stepdown, MONGO, check=_bites("unavailable")),
    Scenario("demoted_primary", "Primary demoted (read-only), the address moved to the new "
             "primary 0.5 s later", demoted_primary, SQL_SERVERS, check=_bites("unavailable")),
    Scenario("frozen_replica", "Replica frozen (link black-holed), then answering again",
             frozen_replica, ("postgres", "postgres-psycopg"), needs=("replica",),
             check=_replica_check("replica_marked_down_ms")),
    Scenario("lagging_replica", "Replica lagging (replay paused), max_replica_lag 0.2 s",
             lagging_replica, ("postgres", "postgres-psycopg"), needs=("replica",),
             check=_replica_check("left_ms")),
    Scenario("cancellation_storm", "Cancellation storm (client disconnects, cancelled waiters)",
             cancellation_storm, EVERY, check=_check_storm),
    Scenario("sustained_load", "Sustained load, concurrency 200, pool 10 + 20",
             sustained_load, EVERY, check=_check_sustained),
    Scenario("startup_database_down", "Startup with the database down",
             startup_database_down, EVERY, check=_check_startup),
    Scenario("shutdown_in_flight", "Shutdown with requests in flight", shutdown_in_flight,
             EVERY, check=_check_shutdown),
]}


_LOCKED_LEFT_OPEN = (
    "SQLite on the lowest supported set (SQLAlchemy 2.0.30, aiosqlite 0.20.0) only: a "
    "connection whose write was refused as locked (503 `ServerUnavailable(kind='locked')`) "
    "keeps its file handle open after `close()` until the garbage collector runs (sqlite_locked: "
    "all 4 of the pool's connections open after shutdown; in 1 run of 4, 2 writes started after "
    "the lock was released were still refused as locked). Reproduced alone: one refused write, "
    "then `close()`, leaves 1 handle open until `gc.collect()`; SQLAlchemy 2.1.9 with aiosqlite "
    "0.22.1 closes it."
)

KNOWN_ISSUES: dict[tuple[str, str], tuple[str, bool]] = {
    ("sqlite_locked", "sqlite"): (_LOCKED_LEFT_OPEN, False),
}
"""(scenario, backend) -> (the library misbehaviour it shows, whether it shows every time).

What it held before is in FIXED.
"""


@contextlib.contextmanager
def finalizer_complaints() -> Iterator[list[str]]:
    """Collect what finalizers complain about while the block runs, then after a full GC.

    Driver objects dropped without being closed warn from `__del__` (ResourceWarning for a
    socket, SQLAlchemy's "non-checked-in connection"); under pytest's `filterwarnings = error`
    those become unraisable exceptions in whichever later test the collector happens to run.
    Catching them here pins them on the scenario that made them, as figures.
    """
    complaints: list[str] = []
    old_hook = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        complaints.append(f"{type(unraisable.exc_value).__name__}: {unraisable.exc_value}")

    sys.unraisablehook = hook
    try:
        yield complaints
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
        complaints += [f"{w.category.__name__}: {w.message}" for w in caught]
    finally:
        sys.unraisablehook = old_hook
    cleaned = [re.sub(r" at 0x[0-9a-f]+|fd=\d+, |, laddr=.*", "", c)[:160] for c in complaints]
    complaints[:] = sorted(set(cleaned))


FIXED: list[str] = [
    "A session still held when `close()` gave up after `drain_timeout` returned its connection to "
    "the disposed SQLAlchemy pool, where it stayed open on the server for good, surviving "
    "gc.collect() (shutdown_in_flight on PostgreSQL, MariaDB x2, SQLite). Fixed in cfcd2e3: "
    "the disposed pool is disposed again when the late session ends.",
    "sqlite3's own 5 s lock timeout, not tied to any connman field, made writers fail with 500 "
    "'database is locked' long before the pool's `timeout` (sustained_load on SQLite: 140 of "
    "20,000). Fixed in cfcd2e3: `timeout` is also sqlite3's lock wait.",
    "SQLite cancellation storm: a task cancelled mid-query left its aiosqlite connection's file "
    "handle open until the garbage collector ran (2,000 cancelled tasks left 3-21 handles open "
    "against pool_size 2; one survived shutdown). Two causes: sqlite3's close() keeps the file "
    "open while a statement is alive, and the cancelled query's cursor was held by the frames of "
    "the CancelledError's traceback, in a cycle; and aiosqlite drops a connection whose connect "
    "was cancelled without closing it. Fixed: on a cancelled session connman interrupts the "
    "running query, clears the finished frames' locals, and shields the aiosqlite connect.",
    "A demoted primary: a few requests (1-17 per fast-size run) ended in a raw 500 "
    "`InvalidRequestError: This connection is closed` instead of a 503 + Retry-After "
    "(demoted_primary, every SQL backend). A read-only refusal condemned every connection "
    "opened before the refusal's time, so refusals still arriving on old connections condemned "
    "the new ones too, and SQLAlchemy gave up after two checkout attempts. Fixed: a refusal "
    "condemns the connections opened no later than the refused one.",
]
"""Library misbehaviour this suite found that has been fixed since (kept for the report)."""

OBSERVATIONS: list[str] = [
    "Shutdown: a session held past `drain_timeout` (a background job) keeps working until it "
    "ends, and its write commits after `close()` returned; once it ends its connection is "
    "closed. In-flight HTTP requests all finish: uvicorn waits for them (it has no graceful "
    "timeout unless `timeout_graceful_shutdown` is set) before the lifespan drains the pools.",
    "uvicorn (0.30+) answers a failed lifespan startup with `sys.exit(3)` inside `Server.serve()`; "
    "tests/_targets.py `serve()` runs that in a task, so the SystemExit escapes into the event "
    "loop. The startup scenario awaits `Server.serve()` itself to catch it.",
    "PostgreSQL restart/kill: besides connection errors, a few requests fail with "
    "`InternalError/InternalClientError` (asyncpg: 'cannot switch to state N; another operation "
    "is in progress') on a connection whose backend was terminated; typed 500s inside the fault "
    "window, none after recovery. asyncpg's `ConnectionRefusedError`/`ConnectionResetError` "
    "surface unwrapped (not as `sqlalchemy.exc.DBAPIError`).",
    "Mongo: during a network cut or a restart PyMongo/Motor mostly wait in server selection "
    "(up to `connect_timeout`) and then succeed, so they show few errors and long p99 instead.",
    "A 5xx from a failed COMMIT (label 'at commit') has an unknown outcome: the server may have "
    "committed before the link broke; it is counted as `commit_errors`, not as a phantom write. "
    "A Mongo write is its own commit: one that fails with a network error, or whose retryable-"
    "write retry finds the document its first attempt inserted (DuplicateKeyError: SecantusDB "
    "does not de-duplicate retries as mongod does), is labelled the same way.",
    "Frozen server / black hole: SQL requests end with 503 + Retry-After (`CheckoutTimeout`: "
    "the pre-ping or the connect got no answer within `connect_timeout`; `PoolTimeout` behind "
    "them) or 503 without Retry-After (`StatementTimeout`); one on a write whose insert had "
    "finished came from its "
    "COMMIT and is counted as a commit error (its outcome is unknown). SQLAlchemy logs "
    "'Exception during reset or similar' at ERROR when the reset-on-return ROLLBACK of such a "
    "connection times out; the connection is invalidated either way (SQLAlchemy before 2.0.58 "
    "then never checked the record in when a cancellation cut the reset: connman gives such a "
    "slot back). Mongo requests end the same way: connman types PyMongo's timeouts "
    "(`NetworkTimeout`, `_OperationCancelled` -> `StatementTimeout`; "
    "`ServerSelectionTimeoutError` -> `CheckoutTimeout`; `WaitQueueTimeoutError` -> "
    "`PoolTimeout`, or `StatementTimeout` on a write PyMongo retries); a Mongo write's "
    "`StatementTimeout` has an unknown outcome and is counted as a commit error.",
    "Found while writing the silent-server scenarios, in the drivers: PyMongo 4.13.0's "
    "AsyncMongoClient never recovered after one `timeoutMS` expiry (its monitor task inherits "
    "the expired deadline, PYTHON-5406, fixed in 4.13.1: connman uses `socketTimeoutMS` there); "
    "SQLAlchemy 2.0.30 leaves a connection open when the dialect's per-connection setup fails "
    "(connman's setup deadline closes it); asyncpg's `terminate()` does nothing once `close()` "
    "began, and `close()` waits for the server to hang up (connman aborts the transport).",
    "Under heavy CPU contention a response is sometimes lost between uvicorn and httpx "
    "(`ReadError`/`RemoteProtocolError` while the app's own counter shows it answered): counted "
    "as `client ...` errors but excused when the app answered every request.",
]


async def run_scenario(scenario: Scenario, env: Env) -> Figures:
    """Run one scenario; the figures also carry its name, backend, wall time and problems."""
    t0 = time.monotonic()
    with finalizer_complaints() as garbage:
        fig = await scenario.run(env)
    fig = {"scenario": scenario.name, "backend": env.target.id,
           "wall_s": round(time.monotonic() - t0, 1), **fig}
    if garbage:
        fig["unclosed_at_gc"] = garbage
    fig["problems"] = scenario.check(fig)
    if any("non-checked-in" in g for g in garbage):
        fig["problems"].append("a pooled connection was never checked in (found by the GC)")
    return fig
