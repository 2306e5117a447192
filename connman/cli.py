"""The `connman` command: `check` the settings against the real servers, `size` pools, `bench`."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Annotated, Any

try:
    import typer
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
except ImportError as exc:  # pragma: no cover - depends on the environment
    from .errors import MissingDependency

    raise MissingDependency("the connman CLI needs typer and rich: "
                            "pip install 'connman[cli]'") from exc

from .budget import compute_budget, server_key, server_limit, size_advice
from .config import load_settings, settings_pools
from .errors import ConnmanError, MissingDependency, UnknownPool
from .manager import ConnectionManager

app = typer.Typer(help="connman: check, size and benchmark your connection pools.",
                  no_args_is_help=True, add_completion=False)

EnvFile = Annotated[Path | None, typer.Option("--env-file", help="A .env file to read.")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="A TOML or JSON settings file.")]


def _mask_options(pool_redact: Any, options: dict[str, Any]) -> dict[str, Any]:
    def clean(value: Any, key: str = "") -> Any:
        if any(w in key.lower() for w in ("pass", "secret", "token", "key", "credential")):
            return "***"
        if isinstance(value, dict):
            return {k: clean(v, str(k)) for k, v in value.items()}
        return value

    cleaned: dict[str, Any] = json.loads(pool_redact(json.dumps(clean(options), default=str)))
    return cleaned


async def _check_pool(manager: ConnectionManager, name: str, connect: bool) -> dict[str, Any]:
    pool = manager.pool(name)
    cfg = pool.config
    row: dict[str, Any] = {
        "pool": name, "backend": pool.backend, "driver": cfg.driver_name, "url": cfg.url.masked,
        "server": server_key(cfg) if cfg.driver_name != "aiosqlite" else "sqlite",
        "size": cfg.size, "overflow": cfg.overflow, "max": cfg.max_size,
        "options": _mask_options(pool.redact, pool.driver_options()),
        "status": "not checked", "version": None, "ping_ms": None, "max_connections": None,
        "reserved": 0, "error": None,
    }
    if not connect:
        return row
    try:
        await pool.open()
        row["ping_ms"] = round(await pool.ping(), 3)
        info = await pool.server_info()
        row.update(version=info.get("version"), max_connections=info.get("max_connections"),
                   reserved=info.get("reserved") or 0, status="ok")
    except Exception as exc:
        row.update(status="error", error=pool.redact(f"{type(exc).__name__}: {exc}")[:400])
    finally:
        await pool.close(0)
    return row


NO_APP_NOTE = ("without --app, check cannot know which pools the app uses: it checked the pools "
               "the settings define (give --app module:app to check those the app needs)")


def _app_manager(spec: str, settings_names: list[str], env_file: Path | None,
                 config_file: Path | None) -> tuple[ConnectionManager | None, list[str]]:
    """Import the app `module:app`; its manager (pools read as the app reads them) and the
    problems: each pool the app uses (`manager.session(name)`) that it would not have."""
    from ._appscan import load_app, managers_of, pools_used

    try:
        module, app = load_app(spec)
    except UnknownPool as exc:  # `manager.session("x")` at import, on pools built from settings
        known = ", ".join(repr(n) for n in settings_names) or "none"
        return None, [f"the app uses pool {exc.pool!r} but the settings define {known}: set "
                      f"CONNMAN_POOLS__{str(exc.pool).upper()}__URL (importing {spec!r} raised "
                      "UnknownPool)"]
    except ConnmanError:
        raise
    except Exception as exc:  # the app's own import error, in one line
        raise AppNotLoaded(f"cannot load the app {spec!r}: {type(exc).__name__}: {exc}") from None
    used = pools_used(app)
    managers = managers_of(app, module)
    manager = managers[0] if managers else None
    for m in managers:  # names asked for at import, in routes or not
        for name in m.requested_pools():
            used.setdefault(name, [])
    if manager is not None and manager.deferred:
        # As open() would: the app's function or its settings; a pool it lacks is reported
        # below, with the routes that use it.
        with contextlib.suppress(UnknownPool):
            manager._read_pools()
    have = settings_names
    if manager is not None and manager.deferred and manager._source is not None:
        # A pool the app uses is missing: check the pools it would get, and say so below.
        manager = ConnectionManager(manager._source(), workers=manager.workers,
                                    replicas=manager.replicas)
    if manager is not None:
        have = list(manager.names)
    problems = []
    for name, routes in used.items():
        if name not in have:
            where = f" ({', '.join(routes[:3])}{', ...' if len(routes) > 3 else ''})" if routes \
                else ""
            known = ", ".join(repr(n) for n in have) or "none"
            problems.append(f"the app uses pool {name!r}{where} but the settings define "
                            f"{known}: set CONNMAN_POOLS__{name.upper()}__URL")
    return manager, problems


class AppNotLoaded(ConnmanError):
    """`connman check --app` could not import the app."""


async def _check(env_file: Path | None, config_file: Path | None, workers: int | None,
                 replicas: int | None, connect: bool, app_spec: str | None = None
                 ) -> dict[str, Any]:
    settings = load_settings(env_file=env_file, config_file=config_file)
    manager: ConnectionManager | None = None
    app_problems: list[str] = []
    if app_spec is not None:
        manager, app_problems = _app_manager(app_spec, list(settings.pools), env_file, config_file)
    if manager is None:
        manager = ConnectionManager(settings_pools(settings, env_file=env_file,
                                                   config_file=config_file),
                                    workers=settings.workers, replicas=settings.replicas)
    workers = workers or settings.workers
    replicas = replicas or settings.replicas
    rows = await asyncio.gather(*(_check_pool(manager, n, connect) for n in manager.names))
    limits: dict[str, int | None] = {}
    for row in rows:
        cfg = manager.pool(row["pool"]).config
        if (limit := server_limit(row)) is not None:
            limits[server_key(cfg)] = limit
    configs = {n: manager.pool(n).config for n in manager.names}
    budget = compute_budget(configs, limits, workers=workers, replicas=replicas)
    problems = [*app_problems,
                *(f"pool {r['pool']!r}: {r['error']}" for r in rows if r["status"] == "error")]
    for line in budget:
        if line.over:
            problems.append(
                f"server {line.server}: pools {', '.join(line.pools)} may open {line.total} "
                f"connections ({line.per_process} per process × {line.workers} workers × "
                f"{line.replicas} replicas) but it accepts {line.limit}")
    return {"pools": list(rows), "budget": [b.as_dict() for b in budget],
            "workers": workers, "replicas": replicas, "problems": problems,
            "app": app_spec, "note": None if app_spec else NO_APP_NOTE, "ok": not problems}


@app.command()
def check(env_file: EnvFile = Path(".env"), config: ConfigFile = None,
          workers: Annotated[int | None, typer.Option(help="Worker processes per replica.")] = None,
          replicas: Annotated[int | None, typer.Option(help="Replicas of the service.")] = None,
          connect: Annotated[bool, typer.Option(help="Connect to each server.")] = True,
          app_spec: Annotated[str | None, typer.Option(
              "--app", help="The app, as module:attribute (like uvicorn's): check that the "
                            "settings define every pool its routes and manager use.")] = None,
          as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Load the settings as the app would, connect each pool, and report options and budget.

    With --app, also import the app and fail when it uses a pool (`manager.session(name)`) the
    settings lack; without it, check cannot know which pools the app needs.
    """
    console = Console()
    try:
        report = asyncio.run(_check(env_file, config, workers, replicas, connect, app_spec))
    except ConnmanError as exc:
        if as_json:
            print(json.dumps({"ok": False, "problems": [str(exc)]}))
        else:
            console.print(f"[red]configuration error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_report(console, report)
    raise typer.Exit(0 if report["ok"] else 1)


def _print_report(console: Console, report: dict[str, Any]) -> None:
    for row in report["pools"]:
        table = Table(title=f"pool {row['pool']!r}", show_header=False, title_justify="left")
        table.add_column("key", style="bold")
        table.add_column("value", overflow="fold")
        status = row["status"]
        colour = {"ok": "green", "error": "red"}.get(status, "yellow")
        table.add_row("status", f"[{colour}]{status}[/{colour}]")
        for key in ("backend", "driver", "url", "version", "ping_ms"):
            table.add_row(key, str(row[key]))
        table.add_row("size / overflow / max", f"{row['size']} / {row['overflow']} / {row['max']}")
        table.add_row("driver options", json.dumps(row["options"], default=str))
        if row["error"]:
            table.add_row("error", f"[red]{row['error']}[/red]")
        console.print(table, highlight=False)
    budget = Table(title=f"connection budget ({report['workers']} workers × "
                         f"{report['replicas']} replicas)", title_justify="left")
    for col in ("server", "pools", "per process", "total", "server accepts", "ok"):
        budget.add_column(col)
    for line in report["budget"]:
        ok = "[red]over[/red]" if line["over"] else "[green]yes[/green]"
        budget.add_row(line["server"], ", ".join(line["pools"]), str(line["per_process"]),
                       str(line["total"]), str(line["limit"] if line["limit"] is not None else "?"),
                       ok)
    console.print(budget, highlight=False)
    for problem in report["problems"]:
        console.print(f"[red]problem:[/red] {escape(problem)}", highlight=False)
    if report["ok"]:
        console.print("[green]all pools ok[/green]")
    if report.get("note"):
        console.print(f"[yellow]note:[/yellow] {report['note']}", highlight=False)


@app.command()
def size(concurrency: Annotated[int, typer.Option(help="Concurrent requests at peak.")],
         target_ms: Annotated[float, typer.Option(help="Target response time, ms.")],
         query_ms: Annotated[float | None, typer.Option(
             help="Time a request holds a connection (its statements, ms).")] = None,
         measure: Annotated[str | None, typer.Option(
             help="Measure on this pool, live: the --query statement (each run in its own unit "
                  "of work, rolled back), or without --query only a ping (a round trip that "
                  "runs no query), which the output says.")] = None,
         query: Annotated[str | None, typer.Option(
             help="With --measure: a statement your requests run (SQL text; Mongo: a command "
                  "as JSON, e.g. '{\"count\": \"users\"}', applied as given).")] = None,
         samples: Annotated[int, typer.Option(help="Runs measured.", min=1)] = 50,
         workers: Annotated[int, typer.Option(help="Worker processes per replica.")] = 1,
         replicas: Annotated[int, typer.Option(help="Replicas of the service.")] = 1,
         limit: Annotated[int | None, typer.Option(help="Server connection limit.")] = None,
         env_file: EnvFile = Path(".env"), config: ConfigFile = None,
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Suggest size/overflow per worker: pool ≈ concurrency × query time ÷ target response time.

    The query time is --query-ms, or measured with --measure POOL: the mean time one unit of work
    running --query holds a connection (checkout, statement, rollback, return); without --query,
    the time of a ping, a lower bound that fits only requests that barely touch the database.
    """
    if query_ms is None and measure is None:
        raise typer.BadParameter("give --query-ms, or --measure POOL (with --query 'SELECT ...')")
    if query is not None and measure is None:
        raise typer.BadParameter("--query is measured on a pool: give --measure POOL too")
    measured: dict[str, Any] | None = None
    if measure is not None:
        try:
            measured, limit = asyncio.run(_measure(measure, query, samples, env_file, config,
                                                   limit))
        except ConnmanError as exc:
            Console(stderr=True).print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
            raise typer.Exit(2) from None
        query_ms = measured["mean_ms"]
    assert query_ms is not None
    try:
        advice = size_advice(concurrency=concurrency, query_ms=query_ms, target_ms=target_ms,
                             workers=workers, replicas=replicas, limit=limit)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    advice["query_ms"] = round(query_ms, 3)
    if measured is not None:
        advice["measured"] = measured
    if as_json:
        print(json.dumps(advice))
        return
    console = Console()
    if measured is not None:
        console.print(measured["summary"], highlight=False)
    console.print(
        f"{concurrency} concurrent × {query_ms:.2f} ms ÷ {target_ms:g} ms ≈ "
        f"{advice['busy_connections']} busy connections over {advice['processes']} processes",
        highlight=False)
    console.print(f"suggested per worker: size={advice['size']} overflow={advice['overflow']} "
                  f"(all processes: up to {advice['total_max']} connections"
                  + (f", capped by the server limit {limit}" if advice["capped"] else "") + ")",
                  highlight=False)


async def _measure(name: str, query: str | None, samples: int, env_file: Path | None,
                   config_file: Path | None, limit: int | None
                   ) -> tuple[dict[str, Any], int | None]:
    """What `size --measure` measured on pool `name`, and the server's connection limit."""
    from ._measure import measure_pool

    settings = load_settings(env_file=env_file, config_file=config_file)
    manager = ConnectionManager(settings_pools(settings, env_file=env_file,
                                               config_file=config_file))
    pool = manager.pool(name)
    await pool.open()
    try:
        measured = await measure_pool(pool, query, samples)
        if limit is None:
            limit = server_limit(await pool.server_info())
        return measured, limit
    finally:
        await pool.close(0)


@app.command()
def bench(quick: Annotated[bool, typer.Option(help="A short run (under a minute).")] = False,
          backends: Annotated[str | None, typer.Option(help="Comma-separated backends.")] = None,
          out: Annotated[Path, typer.Option(help="Results folder.")] = Path("benchmarks/results"),
          urls: Annotated[list[str] | None, typer.Option(
              "--urls", help="KIND=URL of a running server to use instead of a throwaway one "
                             "(postgres, pgbouncer, mysql, mongo); repeat for several.")] = None,
          scenarios: Annotated[str | None, typer.Option(
              help="Comma-separated scenarios: sweep, http, exhaustion, bursts, cold.")] = None,
          ) -> None:
    """Run the benchmark suite on real servers and write JSON, Markdown and plots.

    Needs connman's `bench` extra and the extras of the drivers benchmarked; a missing one raises
    `MissingDependency` naming the extra to install.
    """
    try:
        from .bench.runner import run

        path = run(quick=quick, backends=backends.split(",") if backends else None, out=out,
                   urls=urls or None, scenarios=scenarios.split(",") if scenarios else None)
    except MissingDependency as exc:  # the one line naming the extra, not a traceback
        Console(stderr=True).print(f"connman bench: {exc}", highlight=False, markup=False)
        raise typer.Exit(2) from None
    print(f"results: {path}")


def main() -> None:
    """Entry point of the `connman` console script."""
    app()


if __name__ == "__main__":
    main()
