"""The `connman` command: `check` the settings against the real servers, `size` pools, `bench`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

try:
    import typer
    from rich.console import Console
    from rich.table import Table
except ImportError as exc:  # pragma: no cover - depends on the environment
    from .errors import MissingDependency

    raise MissingDependency("the connman CLI needs typer and rich: "
                            "pip install 'connman[cli]'") from exc

from .budget import compute_budget, server_key, server_limit, size_advice
from .config import load_settings
from .errors import ConnmanError
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


async def _check(env_file: Path | None, config_file: Path | None, workers: int | None,
                 replicas: int | None, connect: bool) -> dict[str, Any]:
    settings = load_settings(env_file=env_file, config_file=config_file)
    manager = ConnectionManager.from_settings(settings)
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
    problems = [f"pool {r['pool']!r}: {r['error']}" for r in rows if r["status"] == "error"]
    for line in budget:
        if line.over:
            problems.append(
                f"server {line.server}: pools {', '.join(line.pools)} may open {line.total} "
                f"connections ({line.per_process} per process × {line.workers} workers × "
                f"{line.replicas} replicas) but it accepts {line.limit}")
    return {"pools": list(rows), "budget": [b.as_dict() for b in budget],
            "workers": workers, "replicas": replicas, "problems": problems,
            "ok": not problems}


@app.command()
def check(env_file: EnvFile = Path(".env"), config: ConfigFile = None,
          workers: Annotated[int | None, typer.Option(help="Worker processes per replica.")] = None,
          replicas: Annotated[int | None, typer.Option(help="Replicas of the service.")] = None,
          connect: Annotated[bool, typer.Option(help="Connect to each server.")] = True,
          as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Load the settings as the app would, connect each pool, and report options and budget."""
    console = Console()
    try:
        report = asyncio.run(_check(env_file, config, workers, replicas, connect))
    except ConnmanError as exc:
        if as_json:
            print(json.dumps({"ok": False, "problems": [str(exc)]}))
        else:
            console.print(f"[red]configuration error:[/red] {exc}", highlight=False)
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
        console.print(f"[red]problem:[/red] {problem}", highlight=False)
    if report["ok"]:
        console.print("[green]all pools ok[/green]")


@app.command()
def size(concurrency: Annotated[int, typer.Option(help="Concurrent requests at peak.")],
         target_ms: Annotated[float, typer.Option(help="Target response time, ms.")],
         query_ms: Annotated[float | None, typer.Option(help="Database time per request, ms.")] = None,
         measure: Annotated[str | None, typer.Option(help="Measure query time on this pool.")] = None,
         workers: Annotated[int, typer.Option(help="Worker processes per replica.")] = 1,
         replicas: Annotated[int, typer.Option(help="Replicas of the service.")] = 1,
         limit: Annotated[int | None, typer.Option(help="Server connection limit.")] = None,
         env_file: EnvFile = Path(".env"), config: ConfigFile = None,
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Suggest size/overflow per worker: pool ≈ concurrency × query time ÷ target response time."""
    if query_ms is None and measure is None:
        raise typer.BadParameter("give --query-ms, or --measure POOL to measure it")
    if measure is not None:
        query_ms, limit = asyncio.run(_measure(measure, env_file, config, limit))
    assert query_ms is not None
    try:
        advice = size_advice(concurrency=concurrency, query_ms=query_ms, target_ms=target_ms,
                             workers=workers, replicas=replicas, limit=limit)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    advice["query_ms"] = round(query_ms, 3)
    if as_json:
        print(json.dumps(advice))
        return
    console = Console()
    console.print(
        f"{concurrency} concurrent × {query_ms:.2f} ms ÷ {target_ms:g} ms ≈ "
        f"{advice['busy_connections']} busy connections over {advice['processes']} processes",
        highlight=False)
    console.print(f"suggested per worker: size={advice['size']} overflow={advice['overflow']} "
                  f"(all processes: up to {advice['total_max']} connections"
                  + (f", capped by the server limit {limit}" if advice["capped"] else "") + ")",
                  highlight=False)


async def _measure(name: str, env_file: Path | None, config_file: Path | None,
                   limit: int | None) -> tuple[float, int | None]:
    manager = ConnectionManager.from_settings(load_settings(env_file=env_file,
                                                            config_file=config_file))
    pool = manager.pool(name)
    await pool.open()
    try:
        samples = sorted([await pool.ping() for _ in range(50)])
        info = await pool.server_info()
        if limit is None:
            limit = server_limit(info)
        return samples[len(samples) // 2], limit
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
    from .bench.runner import run

    path = run(quick=quick, backends=backends.split(",") if backends else None, out=out,
               urls=urls or None, scenarios=scenarios.split(",") if scenarios else None)
    print(f"results: {path}")


def main() -> None:
    """Entry point of the `connman` console script."""
    app()


if __name__ == "__main__":
    main()
