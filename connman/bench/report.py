"""Turns raw results into medians and ratios, and writes results.json, results.md and PNG plots."""

from __future__ import annotations

import json
import shutil
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .bursts import burst_ratios, burst_summary, bursts_md

__all__ = ["PAIRS", "headline", "markdown", "plots", "ratios", "summary", "write"]

PAIRS = (("connman", "hand"), ("connman", "hand_fn"), ("connman", "raw"), ("fast", "raw"),
         ("fast", "hand"))
"""(a, b) pairs whose ratios are reported: a's throughput over b's, measured in the same run."""
VARIANT_ORDER = ("connman", "hand", "hand_fn", "raw", "fast")
SCENARIO_TITLES = {
    "checkout": "Checkout + release",
    "read": "Point read (SELECT v FROM t WHERE k = ? / find_one by _id)",
    "write": "Point write in a transaction (UPDATE ... SET v = v + 1, commit / update_one $inc)",
    "http": "FastAPI endpoint over real HTTP (uvicorn + httpx, point read)",
}
METRICS = ("throughput", "p50_ms", "p99_ms", "p999_ms", "cpu_us_per_op")


def _median(values: Iterable[float]) -> float:
    vals = list(values)
    return float(statistics.median(vals)) if vals else 0.0


def _key(s: dict[str, Any]) -> tuple[str, str, int]:
    return s["backend"], s["scenario"], s["concurrency"]


def summary(samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over repetitions of each metric, per backend, scenario, concurrency and variant."""
    groups: dict[tuple[str, str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        groups[(*_key(s), s["variant"])].append(s)
    out = []
    for (backend, scenario, c, variant), rows in groups.items():
        entry: dict[str, Any] = {"backend": backend, "scenario": scenario, "concurrency": c,
                                 "variant": variant, "reps": len(rows),
                                 "errors": sum(r["errors"] for r in rows)}
        for m in METRICS:
            entry[m] = round(_median(r[m] for r in rows), 4)
        out.append(entry)
    return out


def ratios(samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per pair: median over repetitions of a/b throughput (and of b/a CPU per op), same rep."""
    by_rep: dict[tuple[str, str, int], dict[int, dict[str, dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(dict))
    for s in samples:
        by_rep[_key(s)][s["rep"]][s["variant"]] = s
    out = []
    for (backend, scenario, c), reps in by_rep.items():
        for a, b in PAIRS:
            tput = [r[a]["throughput"] / r[b]["throughput"] for r in reps.values()
                    if a in r and b in r and r[b]["throughput"] > 0]
            cpu = [r[a]["cpu_us_per_op"] / r[b]["cpu_us_per_op"] for r in reps.values()
                   if a in r and b in r and r[b]["cpu_us_per_op"] > 0]
            if tput:
                out.append({"backend": backend, "scenario": scenario, "concurrency": c,
                            "pair": f"{a}/{b}", "throughput_ratio": round(_median(tput), 4),
                            "cpu_ratio": round(_median(cpu), 4), "reps": len(tput),
                            "min": round(min(tput), 4), "max": round(max(tput), 4)})
    return out


def _ratio(results: dict[str, Any], backend: str, scenario: str, c: int, pair: str
           ) -> dict[str, Any] | None:
    rows: list[dict[str, Any]] = results["ratios"]
    for r in rows:
        if (r["backend"], r["scenario"], r["concurrency"], r["pair"]) == (backend, scenario, c,
                                                                          pair):
            return r
    return None


def headline(results: dict[str, Any]) -> list[dict[str, Any]]:
    """connman/hand and connman/raw for checkout and read at the lowest and ~100 concurrency."""
    concs = sorted({s["concurrency"] for s in results["samples"] if s["scenario"] == "read"})
    if not concs:
        return []
    picked = sorted({concs[0], min(concs, key=lambda c: abs(c - 100))})
    rows = []
    for backend in results["backends"]:
        for scenario in ("checkout", "read"):
            for c in picked:
                row: dict[str, Any] = {"backend": backend, "scenario": scenario,
                                       "concurrency": c}
                for pair in ("connman/hand", "connman/raw"):
                    r = _ratio(results, backend, scenario, c, pair)
                    row[pair] = r["throughput_ratio"] if r else None
                    row[f"{pair} range"] = [r["min"], r["max"]] if r else None
                    row[f"{pair} cpu"] = r["cpu_ratio"] if r else None
                if row["connman/hand"] is not None:
                    rows.append(row)
    return rows


def _cell(value: float | None, fmt: str = "{:.2f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def _range(pair: list[float] | None) -> str:
    return f"({pair[0]:.2f}-{pair[1]:.2f})" if pair else ""


def _inverse(value: float | None) -> str:
    return f"{1 / value:.2f}" if value else "n/a"


def _loads(env: dict[str, Any], key: str) -> str:
    return "/".join(f"{x:.2f}" for x in env.get(key) or ()) or "?"


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def markdown(results: dict[str, Any]) -> str:
    """The whole report as Markdown tables."""
    env = results["environment"]
    pkgs = env["packages"]
    plan = results["plan"]
    lines = [
        f"# connman benchmark — {'quick' if results['quick'] else 'full'} run",
        "",
        f"Started {results['started']}, took {results['wall_s']:.0f} s. "
        f"Command: `{results['command']}`.",
        "",
        f"Python {env['python']} on {env['platform']}, {env['cpu_count']} CPUs "
        f"(load average 1/5/15 min at start {_loads(env, 'load_average_at_start')}, at end "
        f"{_loads(env, 'load_average_at_end')}); "
        f"connman git {env['git']}.",
        "",
        "Drivers: " + ", ".join(f"{k} {v}" for k, v in pkgs.items() if v) + ".",
        "",
        "Servers (loopback): " + "; ".join(
            f"{k}: {v}" for k, v in results["servers"]["versions"].items()) + ".",
        "",
        *[f"> **Note.** {n}" for n in results["notes"]],
        "",
        f"Sweep pool settings for every variant: size {plan['sweep_pool']['size']}, "
        f"overflow {plan['sweep_pool']['overflow']} (max {plan['sweep_pool']['max_size']}), "
        f"pre_ping {plan['sweep_pool']['pre_ping']}, timeout {plan['sweep_pool']['timeout']} s. "
        f"Repetitions: {plan['repetitions']} (medians shown; variants interleaved and rotated "
        f"per repetition). Operations per sample by concurrency: "
        + ", ".join(f"c={k}: {v}" for k, v in plan["ops"].items())
        + "".join(f"; {k}: " + ", ".join(f"c={c}: {n}" for c, n in v.items())
                  for k, v in plan.get("overrides", {}).items()) + ".",
        "",
        "Ratios are throughput(a) / throughput(b) from the same repetition, median over "
        "repetitions: 1.00 = same speed, 0.95 = a is 5 % slower. `CPU µs/op` is this "
        "process's CPU time per operation (client side only), less sensitive to a noisy "
        "machine than wall-clock throughput.",
        "",
    ]
    if results["failures"]:
        lines += ["## Not run", "", "| backend | reason |", "| --- | --- |"]
        lines += [f"| {b} | {r} |" for b, r in results["failures"].items()]
        lines.append("")
    if results.get("skipped"):
        lines += ["## Skipped on purpose", "", "| backend | scenario | c | why |",
                  "| --- | --- | ---: | --- |"]
        lines += [f"| {s['backend']} | {s['scenario']} | {s['concurrency']} | {s['reason']} |"
                  for s in results["skipped"]]
        lines.append("")
    head = headline(results)
    if head:
        lines += ["## Headline: connman vs hand-written and vs the raw driver pool", "",
                  "Throughput ratios, median over repetitions (min-max across repetitions in "
                  "brackets), and the CPU-per-operation ratio hand/connman (below 1: connman "
                  "spends more client CPU per operation).", "",
                  "| backend | scenario | c | connman/hand | CPU hand/connman | connman/raw |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['backend']} | {r['scenario']} | {r['concurrency']} | "
                  f"{_cell(r['connman/hand'])} {_range(r.get('connman/hand range'))} | "
                  f"{_inverse(r.get('connman/hand cpu'))} | "
                  f"{_cell(r['connman/raw'])} {_range(r.get('connman/raw range'))} |"
                  for r in head]
        lines.append("")
    for scenario, title in SCENARIO_TITLES.items():
        rows = [s for s in results["summary"] if s["scenario"] == scenario]
        if not rows:
            continue
        lines += [f"## {title}", "",
                  "| backend | c | variant | ops/s | p50 ms | p99 ms | p99.9 ms | CPU µs/op "
                  "| vs hand | vs raw | errors |",
                  "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        rows.sort(key=lambda s: (results["backends"].index(s["backend"]), s["concurrency"],
                                 VARIANT_ORDER.index(s["variant"])))
        for s in rows:
            vs_hand = _ratio(results, s["backend"], scenario, s["concurrency"],
                             f"{s['variant']}/hand")
            vs_raw = _ratio(results, s["backend"], scenario, s["concurrency"],
                            f"{s['variant']}/raw")
            lines.append(
                f"| {s['backend']} | {s['concurrency']} | {s['variant']} | "
                f"{s['throughput']:.0f} | {_ms(s['p50_ms'])} | {_ms(s['p99_ms'])} | "
                f"{_ms(s['p999_ms'])} | {s['cpu_us_per_op']:.0f} | "
                f"{_cell(vs_hand['throughput_ratio'] if vs_hand else None)} | "
                f"{_cell(vs_raw['throughput_ratio'] if vs_raw else None)} | {s['errors']} |")
        if scenario == "http":
            lines += ["", "`hand` uses FastAPI's default dependency scope (its commit runs after "
                      "the response is sent); `hand_fn` is the same `get_db` with "
                      "`scope=\"function\"`, which is what `Depends(manager.session(...))` "
                      "does (the commit finishes before the response, so a failed commit is a "
                      "5xx)."]
        lines.append("")
    lines += _exhaustion_md(results) + bursts_md(results) + _cold_md(results)
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in results.get("plots", [])] + [""]
    return "\n".join(lines)


def exhaustion_summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Median over bursts per backend and variant of the exhaustion numbers."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for e in results["exhaustion"]:
        groups[(e["backend"], e["variant"])].append(e)
    out = []
    for (backend, variant), rows in groups.items():
        first = rows[0]
        out.append({
            "backend": backend, "variant": variant, "bursts": len(rows),
            "requests": first["requests"], "pool_max": first["pool_max"],
            "timeout_s": first["timeout_s"], "hold_s": first["hold_s"],
            "max_waiting": first["max_waiting"],
            "granted": _median(r["granted"] for r in rows),
            "timeouts": _median(r["timeouts"] for r in rows),
            "rejected": _median(r["rejected"] for r in rows),
            "errors": sum(r["errors"] for r in rows),
            "wait_p50_ms": _median(r["wait"]["p50_ms"] for r in rows),
            "wait_p99_ms": _median(r["wait"]["p99_ms"] for r in rows),
            "timeout_p50_ms": _median(r["timeout"]["p50_ms"] for r in rows),
            "timeout_p99_ms": _median(r["timeout"]["p99_ms"] for r in rows),
            "reject_p99_ms": _median(r["reject"]["p99_ms"] for r in rows),
        })
    return out


def _exhaustion_md(results: dict[str, Any]) -> list[str]:
    rows = results.get("exhaustion_summary", [])
    if not rows:
        return []
    first = rows[0]
    lines = [
        "## Pool exhaustion", "",
        f"{first['requests']} requests at once on a pool of {first['pool_max']} connections, "
        f"each holding its connection {first['hold_s'] * 1000:.0f} ms; pool timeout "
        f"{first['timeout_s']} s. `connman_maxwait` also sets `max_waiting` (extra requests "
        "are refused at once with `TooManyWaiters`). Medians over bursts. Mongo: only connman "
        "has a checkout to exhaust (PyMongo/Motor take a connection per operation, so a bare "
        "client has no session-level limit to compare).",
        "",
        "| backend | variant | max_waiting | granted | timeouts | rejected | wait p50 ms | "
        "wait p99 ms | timeout fired p50 / p99 ms | rejection p99 ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        fired = (f"{r['timeout_p50_ms']:.0f} / {r['timeout_p99_ms']:.0f}" if r["timeouts"]
                 else "-")
        reject = f"{r['reject_p99_ms']:.3f}" if r["rejected"] else "-"
        lines.append(
            f"| {r['backend']} | {r['variant']} | {r['max_waiting'] or '-'} | "
            f"{r['granted']:.0f} | {r['timeouts']:.0f} | {r['rejected']:.0f} | "
            f"{r['wait_p50_ms']:.1f} | {r['wait_p99_ms']:.1f} | {fired} | {reject} | "
            f"{r['errors']} |")
    return [*lines, ""]


def cold_summary(results: dict[str, Any]) -> dict[str, Any]:
    """Per link (loopback, delayed): median open time of each pool alone, of the 4 together,
    and their ratio."""
    cold = results["cold_start"]
    out: dict[str, Any] = {}
    by_link: dict[float, list[dict[str, Any]]] = {}
    for r in cold["reps"]:
        by_link.setdefault(float(r.get("link_ms", 0.0)), []).append(r)
    for link_ms, reps in sorted(by_link.items()):
        singles = {k: _median(r["single_open_s"][k] for r in reps) for k in cold["pools"]}
        slowest = max(singles.values())
        together = _median(r["all_open_s"] for r in reps)
        out["loopback" if not link_ms else f"link_{link_ms:g}ms"] = {
            "link_ms": link_ms,
            "single_open_ms": {k: round(v * 1000, 2) for k, v in singles.items()},
            "slowest_single_ms": round(slowest * 1000, 2),
            "sum_of_singles_ms": round(sum(singles.values()) * 1000, 2),
            "all_open_ms": round(together * 1000, 2),
            "all_close_ms": round(_median(r["all_close_s"] for r in reps) * 1000, 2),
            "all_vs_slowest": round(together / slowest, 3) if slowest else None,
            "reps": len(reps)}
    return out


def _cold_md(results: dict[str, Any]) -> list[str]:
    summary = results.get("cold_start_summary") or {}
    if not summary:
        return []
    pools = results["cold_start"]["pools"]
    runs = list(summary.values())
    lines = ["## Cold start: a lifespan with 4 pools", "",
             "`manager.open()` (inside `manager.lifespan()`) of 4 pools, each warming "
             f"{results['plan']['cold_pool_size']} connections, against each pool opened "
             f"alone. Medians of {runs[0]['reps']} runs. On loopback, opening is CPU-bound "
             "(driver handshakes and SQLAlchemy's dialect setup in the one event loop), so the "
             "pools cannot overlap much; through a proxy that delays each packet, as a network "
             "between zones does, they open in parallel.", ""]
    heads = ["loopback" if not c["link_ms"] else f"{c['link_ms']:g} ms each way" for c in runs]
    lines += ["| pools | " + " | ".join(f"open ms, {h}" for h in heads) + " |",
              "| --- |" + " ---: |" * len(runs)]
    for k in runs[0]["single_open_ms"]:
        lines.append(f"| {k} alone ({pools[k]}) | "
                     + " | ".join(f"{c['single_open_ms'][k]:.1f}" for c in runs) + " |")
    lines.append("| all 4 together | " + " | ".join(f"{c['all_open_ms']:.1f}" for c in runs)
                 + " |")
    lines.append("| sum of the 4 alone (one after another) | "
                 + " | ".join(f"{c['sum_of_singles_ms']:.1f}" for c in runs) + " |")
    lines.append("| **all 4 / slowest alone** | "
                 + " | ".join(f"**{_cell(c['all_vs_slowest'])}**" for c in runs) + " |")
    lines += ["", "1.00 = opening four costs no more than opening the slowest one. Closing all 4 "
              "(loopback): " f"{runs[0]['all_close_ms']:.1f} ms.", ""]
    return lines


def plots(results: dict[str, Any], directory: Path) -> list[str]:
    """PNG plots (matplotlib, Agg): throughput per scenario, ratios, exhaustion, cold start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[str] = []
    backends = [b for b in results["backends"]
                if any(s["backend"] == b for s in results["summary"])]
    for scenario in ("checkout", "read", "write"):
        rows = [s for s in results["summary"] if s["scenario"] == scenario]
        if not rows:
            continue
        cols = min(4, len(backends))
        nrows = -(-len(backends) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.2 * nrows), squeeze=False)
        for ax, backend in zip(axes.flat, backends, strict=False):
            for variant in VARIANT_ORDER:
                pts = sorted((s["concurrency"], s["throughput"]) for s in rows
                             if s["backend"] == backend and s["variant"] == variant)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=variant)
            ax.set_xscale("log")
            ax.set_title(backend, fontsize=9)
            ax.set_xlabel("concurrency")
            ax.set_ylabel("ops/s")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(backends):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=8)
        fig.suptitle(SCENARIO_TITLES[scenario], fontsize=10)
        fig.tight_layout()
        name = f"throughput_{scenario}.png"
        fig.savefig(directory / name, dpi=90)
        plt.close(fig)
        made.append(name)
    made += _ratio_plot(results, backends, directory, plt)
    return made


def _ratio_plot(results: dict[str, Any], backends: list[str], directory: Path, plt: Any
                ) -> list[str]:
    scenarios = [s for s in ("checkout", "read", "write", "http")
                 if any(r["scenario"] == s for r in results["ratios"])]
    if not scenarios or not backends:
        return []
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.5 * len(scenarios), 3.6),
                             squeeze=False)
    for ax, scenario in zip(axes.flat, scenarios, strict=True):
        concs = sorted({r["concurrency"] for r in results["ratios"] if r["scenario"] == scenario})
        width = 0.8 / max(1, len(concs))
        for i, c in enumerate(concs):
            vals = []
            for b in backends:
                r = _ratio(results, b, scenario, c, "connman/hand")
                vals.append(r["throughput_ratio"] if r else 0.0)
            ax.bar([x + i * width for x in range(len(backends))], vals, width, label=f"c={c}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(backends))])
        ax.set_xticklabels(backends, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{scenario}: connman / hand-written", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(directory / "ratios.png", dpi=90)
    plt.close(fig)
    return ["ratios.png"]


def write(results: dict[str, Any], out: Path, started: datetime) -> Path:
    """Add summaries, write results.json/results.md/PNGs to out/<timestamp>/ and out/latest/."""
    run_dir = out / started.strftime("%Y%m%dT%H%M%SZ")
    run_dir.mkdir(parents=True, exist_ok=True)
    results["summary"] = summary(results["samples"])
    results["ratios"] = ratios(results["samples"])
    results["headline"] = headline(results)
    results["exhaustion_summary"] = exhaustion_summary(results)
    results["cold_start_summary"] = cold_summary(results)
    results["bursts_summary"] = burst_summary(results.get("bursts", []))
    results["bursts_ratios"] = burst_ratios(results["bursts_summary"])
    results["plots"] = plots(results, run_dir)
    raw = ("samples", "exhaustion", "bursts", "cold_start")
    ordered = {**{k: v for k, v in results.items() if k not in raw},
               **{k: results[k] for k in raw}}
    (run_dir / "results.json").write_text(json.dumps(ordered, indent=1) + "\n")
    (run_dir / "results.md").write_text(markdown(results))
    latest = out / "latest"
    if latest.exists():
        shutil.rmtree(latest)
    shutil.copytree(run_dir, latest)
    return run_dir
