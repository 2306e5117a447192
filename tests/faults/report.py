"""Run every fault scenario on every backend it applies to and write docs/reliability.md.

    python -m tests.faults.report            # the fast (CI) sizes, a few minutes
    python -m tests.faults.report --full     # the full sizes (20,000 requests of sustained load)
    python -m tests.faults.report --full --only frozen_server,blackhole --merge
                                             # redo some rows, keep the others of docs/reliability.md

Servers are throwaway ones started here (or the `CONNMAN_TEST_*_URL` ones, which cannot be
restarted, so their restart scenarios fail); every one is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from connman.testing.servers import (
    MariaDBServer,
    MongoWireServer,
    PgBouncerServer,
    PostgresReplicaServer,
    PostgresServer,
    Server,
    server_from_env,
)

from .._targets import Target
from ..conftest import TARGETS
from .load import shutdown
from .scenarios import (
    FIXED,
    KNOWN_ISSUES,
    OBSERVATIONS,
    SCENARIOS,
    Env,
    Figures,
    run_scenario,
)

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "reliability.md"
BACKENDS = list(TARGETS)

# What each column of the table shows, from the figures.
EXTRAS = ("longest_ms", "bound_ms", "killed", "handlers_cancelled", "tasks_cancelled",
          "serves_after", "throughput_rps",
          "fail_ms", "hang_fail_ms", "app_fail_ms", "app_exit_code", "drain_ms", "late_request",
          "job", "commit_errors", "commit_errors_applied", "unknown_writes", "transport",
          "write_recovery_ms", "heal_target_ms", "replica_marked_down_ms", "left_ms", "rejoin_ms",
          "rejoin_target_ms", "writes_on_old_primary")

LIMITS = [
    ("SQLite", "has no server: nothing to restart, kill, cut, slow down, freeze or black-hole, "
     "and no PgBouncer; it runs the scenarios that need no server (cancellation storm, sustained "
     "load, startup with its file unreachable, shutdown). Its `statement_timeout` (the running "
     "query interrupted) is tested with a runaway query in tests/faults/test_frozen.py. Its "
     "'server-side' connection count is the number of file descriptors this process holds on "
     "the database file."),
    ("MariaDB (aiomysql, asyncmy)", "has no failpoints: the stalled-server case is covered by "
     "the proxy's latency; PgBouncer is PostgreSQL-only."),
    ("PostgreSQL", "has no failpoints either; PgBouncer (transaction mode, `external_pooler: "
     "pgbouncer`) is restarted in front of it in its own scenario."),
    ("Mongo (PyMongo, Motor)", "the server is SecantusDB, a MongoDB-wire surrogate (pure "
     "Python, WiredTiger storage), not mongod. It runs with `--enable-test-commands`, so "
     "`configureFailPoint` with `failCommand` works, `closeConnection` and "
     "`blockConnection`/`blockTimeMS` included (the block is a `time.sleep` in the connection's "
     "server thread), scoped to the app by `appName`. `serverStatus.connections.current` exists "
     "but counts every client and reports `available: 0`, so the per-app count comes from "
     "`currentOp` (one entry per connection, with its client metadata) and the kill scenario uses "
     "`killOp`, which SecantusDB implements by closing the connection's socket. A Mongo client "
     "keeps one monitoring connection besides its pool (`serverMonitoringMode=poll`); every pool "
     "keeps up to `size + overflow` connections until `overflow_idle`, so its baseline is that "
     "plus one."),
    ("PgBouncer", "applies to PostgreSQL only; the app's connections are counted with "
     "`SHOW CLIENTS` on its admin console."),
    ("Replicas (frozen, lagging)", "PostgreSQL only: a streaming replica of the shared server "
     "(`pg_basebackup -R`), read with `readonly=True` (`GET /replica/{key}`, 200 whether the "
     "replica has the key yet or not) and `read_your_writes: off`, so the reads do go to it. "
     "Frozen: the link to it black-holed (TcpProxy); lagging: `pg_wal_replay_pause()` with "
     "`max_replica_lag` 0.2 s. MariaDB replication is not built here, and `max_replica_lag` "
     "does not apply to MariaDB."),
    ("Demoted primary", "each run starts a throwaway server of its own as the old primary (the "
     "shared one is the new primary), demotes it (PostgreSQL: `ALTER SYSTEM SET "
     "default_transaction_read_only = on` + `pg_reload_conf()`; MariaDB: `SET GLOBAL read_only "
     "= 1`, the app's login without SUPER) and 0.5 s later points the pool's address (the "
     "proxy) at the new primary; the load writes only, so the recovery is the first write "
     "served. Its wall time includes starting that server."),
    ("Server full", "the app's own login is limited (PostgreSQL `CONNECTION LIMIT`, MariaDB "
     "`MAX_USER_CONNECTIONS`) to 1 while its connections are killed, so the server refuses "
     "the rest (SQLSTATE 53300, MariaDB's max_user_connections error) and stays usable for "
     "everyone else; a server-wide `max_connections` refusal (53300 'remaining connection "
     "slots are reserved', 1040) is the same kind, tested in tests/test_outages.py."),
    ("Mongo step-down", "SecantusDB implements `replSetStepDown` as a single-node replica set "
     "does (secondary for the period, writes refused with 10107 NotWritablePrimary, reads "
     "served), so the pool's URL names the replica set (`replicaSet=secantus`). There is no "
     "other node to elect: the same server is primary again after the period. Its 'not "
     "primary' error carries no `RetryableWriteError` label, so PyMongo does not retry the "
     "write itself as it would against mongod; the load writes only."),
    ("SQLite locked", "another sqlite3 connection (outside the pool) holds the write lock "
     "(`BEGIN IMMEDIATE`) past the pool's `timeout`, which is also sqlite3's lock wait."),
    ("Late server", "an optional pool (`required: false`) starts with its server refusing "
     "connections (the proxy cut); the table was created beforehand on a connection of its "
     "own. The recovery is from the proxy letting connections through again; the target is "
     "`connect_timeout` (1 s) plus one healing tick (1 s)."),
    ("Frozen server, black hole", "a frozen server is SIGSTOP of its whole process tree "
     "(PostgreSQL's backends leave the postmaster's process group); its kernel still completes "
     "new TCP handshakes, so a connect gets as far as the server's greeting. The proxy's black "
     "hole accepts new connections the same way and holds every byte; on restore it delivers "
     "what it held, as TCP's retransmissions would. Neither drops SYNs, which only a firewall "
     "rule could do here."),
]


def start_servers() -> dict[str, Server]:
    """The throwaway servers (or the external ones named by CONNMAN_TEST_*_URL)."""
    servers: dict[str, Server] = {}
    for kind, cls in (("postgres", PostgresServer), ("mysql", MariaDBServer),
                      ("mongo", MongoWireServer)):
        servers[kind] = server_from_env(kind) or cls().start()
    pg = servers["postgres"]
    servers["pgbouncer"] = server_from_env("pgbouncer") or PgBouncerServer(
        pg).start()  # type: ignore[arg-type]
    servers["replica"] = PostgresReplicaServer(pg).start()  # type: ignore[arg-type]
    return servers


def target_for(tid: str, servers: dict[str, Server], sqlite_dir: Path) -> Target:
    kind, driver, fixture = TARGETS[tid]
    server = servers[fixture.removesuffix("_server")] if fixture else None
    return Target(tid, kind, driver, server, None if fixture else str(sqlite_dir))


async def run_all(full: bool, only: set[str] | None, backends: set[str] | None,
                  progress: Callable[[str], None]) -> list[Figures]:
    import tempfile

    servers = start_servers()
    commit = _commit()
    results: list[Figures] = []
    try:
        with tempfile.TemporaryDirectory(prefix="connman-faults-") as tmp:
            for scenario in SCENARIOS.values():
                if only and scenario.name not in only:
                    continue
                for tid in scenario.targets:
                    if backends and tid not in backends:
                        continue
                    env = Env(target_for(tid, servers, Path(tmp)), full=full,
                              servers={n: servers[n] for n in scenario.needs})
                    t0 = time.monotonic()
                    try:
                        fig = await run_scenario(scenario, env)
                    except Exception as exc:
                        fig = {"scenario": scenario.name, "backend": tid,
                               "wall_s": round(time.monotonic() - t0, 1),
                               "crashed": "".join(traceback.format_exception_only(exc)).strip(),
                               "problems": ["the scenario crashed"]}
                    fig["commit"] = commit
                    results.append(fig)
                    verdict = "ok" if not fig["problems"] else "; ".join(fig["problems"])
                    progress(f"{scenario.name:24} {tid:16} {fig['wall_s']:6.1f}s  {verdict}")
    finally:
        shutdown()
        for server in reversed(list(servers.values())):
            server.stop()
    return results


# ------------------------------------------------------------------ Markdown


def _errors(fig: Figures) -> str:
    errors = fig.get("errors")
    if isinstance(errors, dict) and errors:
        return "<br>".join(f"{n}× {k}" for k, n in errors.items())
    return "—"


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _extras(fig: Figures) -> str:
    parts = []
    for key in EXTRAS:
        if key in fig and fig[key] not in (None, 0, ""):
            parts.append(f"{key}={fig[key]}")
    for key in ("error", "hang_error"):
        if key in fig:
            parts.append(f"{key}={fig[key]}")
    if "names_pool" in fig:
        parts.append(f"names pool={fig['names_pool'] and fig.get('app_log_names_pool')}")
    if fig.get("unclosed_at_gc"):
        parts.append(f"unclosed at GC: {'; '.join(fig['unclosed_at_gc'])}")
    if fig.get("crashed"):
        parts.append(f"crashed: {fig['crashed']}")
    return "<br>".join(_cell(p) for p in parts) or "—"


def verdict(fig: Figures) -> str:
    known = KNOWN_ISSUES.get((fig["scenario"], fig["backend"]))
    if not fig["problems"]:
        return "pass"
    text = "FAIL: " + "; ".join(fig["problems"])
    if known is not None:
        text += " (known issue, see below)"
    return text


def _commit() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.strip() or "unknown"


def render(results: list[Figures], *, full: bool, command: str) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    versions = []
    for dist in ("sqlalchemy", "asyncpg", "aiomysql", "asyncmy", "aiosqlite", "pymongo", "motor",
                 "fastapi", "uvicorn", "httpx", "SecantusDB"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
    lines = [
        "# Reliability: fault scenarios under load",
        "",
        "Generated by `tests/faults/report.py`; do not edit by hand. Each scenario runs the test "
        "app of `tests/faults/app.py` (`POST /items/{key}` writes via "
        "`Depends(manager.session(\"main\"))`, `GET /items/{key}`, `GET /slow`) under uvicorn, "
        "loads it with httpx from a separate process, injects its fault on a real server on "
        "127.0.0.1, lifts it, and checks: the app's server-side connections return to what the "
        "pool may keep (and to zero after shutdown), every write acknowledged with a 2xx is in "
        "the database and none from a failed request is, and every error is one a client can "
        "act on (503 + `Retry-After` for an exhausted pool, a typed 5xx while the server is "
        "gone, nothing after recovery).",
        "",
        f"- Command: `{command}` ({'full' if full else 'fast, CI'} sizes)",
        f"- Date: {now}; time spent in the scenarios: "
        f"{sum(float(f.get('wall_s') or 0) for f in results):.0f} s",
        f"- connman: commit {', '.join(sorted({str(f.get('commit', '?')) for f in results}))} "
        "(each row's is in the JSON of `--json`)",
        f"- Machine: {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}",
        f"- Libraries: {', '.join(versions)}",
        f"- Result: {sum(not f['problems'] for f in results)} of {len(results)} runs pass",
        "",
        "Columns: **req** requests sent, **2xx**, **errors** by status and type (`client X`: no "
        "HTTP response, e.g. a client timeout), **unexp.** errors a client cannot act on or seen "
        "outside the fault window, **leaked** connections (server-side count above the pool's "
        "baseline after the load, plus any left after shutdown), **lost**/**phantom** writes, "
        "**recovery** ms from the fault being lifted to the first 2xx of a request started after "
        "it (outage: how long the fault lasted), **p50/p99** ms of the 2xx.",
        "",
        "| scenario | backend | req | 2xx | errors | unexp. | leaked | lost | phantom | "
        "recovery ms (outage) | p50/p99 ms | other figures | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for fig in results:
        title = SCENARIOS[fig["scenario"]].title
        recovery = "—"
        if "recovery_ms" in fig:
            recovery = f"{_cell(fig['recovery_ms'])} ({_cell(fig.get('outage_ms'))})"
        lat = (f"{_cell(fig.get('p50_ms'))}/{_cell(fig.get('p99_ms'))}"
               if "p50_ms" in fig else "—")
        lines.append(
            f"| {title} | {fig['backend']} | {_cell(fig.get('requests'))} | "
            f"{_cell(fig.get('ok'))} | {_errors(fig)} | {_cell(fig.get('unexpected'))} | "
            f"{_cell(fig.get('leaked'))} | {_cell(fig.get('lost_writes'))} | "
            f"{_cell(fig.get('phantom_writes'))} | {recovery} | {lat} | {_extras(fig)} | "
            f"{_cell(verdict(fig))} |")
    lines += ["", "## What a backend cannot do here, and why", ""]
    lines += [f"- **{name}**: {text}" for name, text in LIMITS]
    issues = sorted({reason for reason, _ in KNOWN_ISSUES.values()})
    lines += ["", "## Known library issues these runs show", ""]
    lines += [f"- {reason} Shown by: " + ", ".join(
        f"`{s}` on {b}" for (s, b), (r, _) in sorted(KNOWN_ISSUES.items()) if r == reason)
        for reason in issues]
    if not issues:
        lines.append("None: no scenario is marked as a known library issue.")
    lines += ["", "## Found by this suite and fixed since", ""]
    lines += [f"- {text}" for text in FIXED]
    lines += ["", "## Observations", ""]
    lines += [f"- {text}" for text in OBSERVATIONS]
    samples: dict[str, str] = {}
    for fig in results:
        for label, message in (fig.get("error_samples") or {}).items():
            samples.setdefault(label, message)
    if samples:
        lines += ["", "## One message per error type seen", ""]
        lines += [f"- `{label}`: {_cell(message)}" for label, message in sorted(samples.items())]
    lines += soak_section()
    lines += ["", "## Scenarios", ""]
    for scenario in SCENARIOS.values():
        doc = " ".join((scenario.run.__doc__ or "").split())
        lines.append(f"- **{scenario.title}** (`{scenario.name}`, on "
                     f"{', '.join(scenario.targets)}): {doc}")
    lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------ merging into an earlier report


def _rows(text: str) -> dict[tuple[str, str], str]:
    """The result table's rows of a rendered report, keyed by (scenario title, backend)."""
    rows: dict[tuple[str, str], str] = {}
    in_table = False
    for line in text.splitlines():
        if line.startswith("| scenario | backend |"):
            in_table = True
            continue
        if not in_table or line.startswith("| ---"):
            continue
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows[(cells[0], cells[1])] = line
    return rows


def _section(text: str, title: str) -> list[str]:
    """The `- ...` lines of a `## title` section."""
    lines = text.splitlines()
    try:
        start = lines.index(f"## {title}") + 1
    except ValueError:
        return []
    out = []
    for line in lines[start:]:
        if line.startswith("## "):
            break
        if line.startswith("- "):
            out.append(line)
    return out


def merge_reports(old: str, new: str, *, command: str) -> str:
    """`new` with the result rows of `old` that `new` did not redo, in the scenarios' order.

    The header keeps `old`'s command and date and says which rows `command` redid when; the pass
    count covers every row; the error samples are the union of both.
    """
    old_rows, new_rows = _rows(old), _rows(new)
    order = [(s.title, t) for s in SCENARIOS.values() for t in s.targets]
    merged = {**old_rows, **new_rows}
    rows = [merged[key] for key in order if key in merged]
    passed = sum(1 for line in rows if line.rstrip().endswith("| pass |"))
    old_head = {line.split(":", 1)[0]: line for line in old.splitlines()
                if line.startswith("- ") and ":" in line}
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    redone = sorted({title for title, _ in new_rows})
    out: list[str] = []
    lines = new.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        key = line.split(":", 1)[0] if line.startswith("- ") else None
        if key in ("- Command", "- Date") and key in old_head:
            out.append(old_head[key])
            if key == "- Date":
                out.append(f"- Merged: `{command}` redid {len(new_rows)} rows on {now} ("
                           + "; ".join(redone) + ")")
        elif key == "- connman" and "- connman" in old_head:
            commits = {c.strip() for h in (old_head["- connman"], line)
                       for c in h.split("commit", 1)[1].split("(")[0].split(",")}
            out.append(f"- connman: commit {', '.join(sorted(commits))} (each row's is in the "
                       "JSON of `--json`)")
        elif key == "- Result":
            out.append(f"- Result: {passed} of {len(rows)} runs pass")
        elif line.startswith("| scenario | backend |"):
            out += [line, lines[i + 1], *rows]
            i += 2
            while i < len(lines) and lines[i].startswith("| "):
                i += 1
            continue
        elif line == "## One message per error type seen" or (
                line == "## Scenarios" and "## One message per error type seen" not in lines):
            samples = sorted(set(_section(old, "One message per error type seen"))
                             | set(_section(new, "One message per error type seen")))
            labels: set[str] = set()
            unique = []
            for sample in samples:
                label = sample.split("`: ", 1)[0]
                if label not in labels:
                    labels.add(label)
                    unique.append(sample)
            if unique:
                out += ["## One message per error type seen", "", *unique, ""]
            if line == "## One message per error type seen":
                i += 1
                while i < len(lines) and not lines[i].startswith("## "):
                    i += 1
                continue
            out.append(line)
        else:
            out.append(line)
        i += 1
    return "\n".join(out) + ("\n" if new.endswith("\n") else "")


SOAK = ROOT / "benchmarks" / "soak.json"
"""Written by `python benchmarks/soak.py --json benchmarks/soak.json`; rendered below if present."""


def soak_section(path: Path = SOAK) -> list[str]:
    """The long soak's figures (memory after warm-up and at the end), from its JSON."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    lines = ["", "## Long soak: memory stays flat", "",
             f"`{data['command']}` ({data['date']}, {data['cpus']} CPUs, Python {data['python']}, "
             f"SQLAlchemy {data['sqlalchemy']}): on each backend, sessions in cycles of five bursts "
             "of 100 at once 50 ms apart, then 500 at concurrency 5, and every 20th cycle a 1.5 s "
             "pause, longer than the pool's `overflow_idle` (1 s), so the overflow is closed and "
             "reopened; pool 10 + 20. RSS is this process's resident memory after a full "
             "`gc.collect()`: after the first 10,000 sessions and at the end.", "",
             "| backend | sessions | errors | sessions/s | RSS after warm-up MiB | RSS at end MiB "
             "| growth KiB | overflow closed when idle | left open after shutdown |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in data["results"]:
        lines.append(
            f"| {r['backend']} | {r['sessions']:,} | {r['errors']} | {r['sessions_per_s']} | "
            f"{r['rss_after_warmup_kib'] / 1024:.1f} | {r['rss_end_kib'] / 1024:.1f} | "
            f"{r['rss_growth_kib']:+d} | {r['connections_idle_closed']} | "
            f"{r['pool_size_after_close']} |")
    if data.get("note"):
        lines += ["", str(data["note"])]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.report",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--full", action="store_true", help="full sizes (20,000 requests ...)")
    parser.add_argument("--only", help="comma-separated scenario names")
    parser.add_argument("--backends", help="comma-separated backends: " + ", ".join(BACKENDS))
    parser.add_argument("--out", type=Path, default=OUT, help=f"default: {OUT}")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--base", type=Path, help="figures of an earlier run (--json): rows this "
                        "run does not redo are taken from it")
    parser.add_argument("--merge", action="store_true", help="keep the rows of the existing "
                        "--out file that this run does not redo (with --only/--backends)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    # As under pytest (filterwarnings = error): a driver object dropped unclosed then shows up in
    # the figures of the scenario that dropped it (see scenarios.finalizer_complaints).
    from sqlalchemy.exc import SAWarning

    warnings.filterwarnings("error", category=ResourceWarning)
    warnings.filterwarnings("error", category=SAWarning)
    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)  # "Exception during reset"
    only = set(args.only.split(",")) if args.only else None
    backends = set(args.backends.split(",")) if args.backends else None
    t0 = time.monotonic()
    results = asyncio.run(run_all(args.full, only, backends,
                                  lambda line: print(line, flush=True)))
    if args.base:
        redone = {(f["scenario"], f["backend"]) for f in results}
        order = [(s.name, t) for s in SCENARIOS.values() for t in s.targets]
        merged = {(f["scenario"], f["backend"]): f for f in json.loads(args.base.read_text())
                  if (f["scenario"], f["backend"]) not in redone}
        merged.update({(f["scenario"], f["backend"]): f for f in results})
        results = [merged[key] for key in order if key in merged]
    command = "python -m tests.faults.report" + (" --full" if args.full else "")
    text = render(results, full=args.full, command=command)
    if args.merge and args.out.exists():
        subset = "".join(f" --{k} {v}" for k, v in (("only", args.only),
                                                      ("backends", args.backends)) if v)
        text = merge_reports(args.out.read_text(), text, command=command + subset)
    print(f"{time.monotonic() - t0:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0 if all(not f["problems"] or (f["scenario"], f["backend"]) in KNOWN_ISSUES
                    for f in results) else 1


if __name__ == "__main__":
    sys.exit(main())
