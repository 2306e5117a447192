"""The benchmark suite in quick mode, on the suite's own servers: files, variants, ratios.

Asserts what the run produced, never how fast anything was.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from connman import MissingDependency
from connman.bench import QUICK_BACKENDS, VARIANTS, arun
from connman.bench.__main__ import parser
from connman.bench.deps import require_bench, require_drivers
from connman.bench.infra import parse_urls
from connman.bench.report import PAIRS
from connman.bench.runner import QUICK, rotate
from connman.testing.servers import Server

pytestmark = [pytest.mark.postgres, pytest.mark.mongo]


@pytest.fixture(scope="module")
async def quick_run(postgres_server: Server, mongo_server: Server,
                    tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    return await arun(quick=True, out=out, progress=False,
                      urls={"postgres": postgres_server.url(), "mongo": mongo_server.url()})


@pytest.fixture(scope="module")
def results(quick_run: Path) -> dict[str, Any]:
    return json.loads((quick_run / "results.json").read_text())


def test_writes_json_markdown_and_plots_to_the_run_dir_and_latest(quick_run: Path) -> None:
    latest = quick_run.parent / "latest"
    for d in (quick_run, latest):
        for name in ("results.json", "results.md", "throughput_read.png", "ratios.png"):
            assert (d / name).is_file(), d / name
            assert (d / name).stat().st_size > 0
    assert (latest / "results.json").read_text() == (quick_run / "results.json").read_text()


def test_every_backend_ran_without_failures(results: dict[str, Any]) -> None:
    assert results["quick"] is True
    assert results["failures"] == {}
    assert results["backends"] == list(QUICK_BACKENDS)
    env = results["environment"]
    assert env["cpu_count"] >= 1
    for pkg in ("sqlalchemy", "asyncpg", "aiosqlite", "pymongo"):
        assert env["packages"][pkg]
    assert set(results["servers"]["versions"]) == set(QUICK_BACKENDS)
    assert "SecantusDB" in results["servers"]["versions"]["mongo-pymongo"]


def test_every_variant_has_positive_throughput_in_every_scenario(
        results: dict[str, Any]) -> None:
    summary = results["summary"]
    for backend in QUICK_BACKENDS:
        sql = not backend.startswith("mongo")
        for scenario, concurrencies in (("checkout", QUICK.concurrencies),
                                        ("read", QUICK.concurrencies),
                                        ("write", QUICK.concurrencies),
                                        ("http", (QUICK.http_concurrency,))):
            variants = [*VARIANTS, "hand_fn"] if scenario == "http" and sql else list(VARIANTS)
            for c in concurrencies:
                for variant in variants:
                    rows = [s for s in summary if (s["backend"], s["scenario"], s["concurrency"],
                                                   s["variant"]) == (backend, scenario, c, variant)]
                    assert len(rows) == 1, (backend, scenario, c, variant)
                    assert rows[0]["throughput"] > 0, rows[0]
                    assert rows[0]["errors"] == 0, rows[0]
                    assert 0 < rows[0]["p50_ms"] <= rows[0]["p99_ms"] <= rows[0]["p999_ms"]


def test_ratios_are_reported_for_every_pair_measured_in_the_same_run(
        results: dict[str, Any]) -> None:
    pairs = {(r["backend"], r["scenario"], r["concurrency"], r["pair"]): r
             for r in results["ratios"]}
    for backend in QUICK_BACKENDS:
        for c in QUICK.concurrencies:
            for a, b in PAIRS:
                if "hand_fn" in (a, b):
                    continue
                r = pairs[(backend, "read", c, f"{a}/{b}")]
                assert r["throughput_ratio"] > 0
                assert r["cpu_ratio"] > 0
    head = results["headline"]
    assert {(h["backend"], h["scenario"]) for h in head} == {
        (b, s) for b in QUICK_BACKENDS for s in ("checkout", "read")}
    assert all(h["connman/hand"] > 0 and h["connman/raw"] > 0 for h in head)


def test_exhaustion_and_cold_start_are_reported(results: dict[str, Any]) -> None:
    bursts = results["exhaustion"]
    for backend in QUICK_BACKENDS:
        variants = {e["variant"] for e in bursts if e["backend"] == backend}
        assert {"connman", "connman_maxwait"} <= variants
        if backend == "postgres-asyncpg":
            assert {"hand", "raw"} <= variants
    for e in bursts:
        assert e["errors"] == 0, e
        assert e["granted"] + e["timeouts"] + e["rejected"] == e["requests"]
        assert e["granted"] >= e["pool_max"]
    summary = results["cold_start_summary"]
    assert set(summary) == {"loopback", "link_2.5ms"}
    for cold in summary.values():
        assert cold["all_open_ms"] > 0
        assert len(cold["single_open_ms"]) == 4
    # Through the delaying proxy every pool alone takes at least a few round trips.
    networked = [k for k, b in results["cold_start"]["pools"].items() if b != "sqlite-aiosqlite"]
    assert networked
    assert min(summary["link_2.5ms"]["single_open_ms"][k] for k in networked) > 10


def test_bursts_are_reported_for_every_variant_on_every_backend(results: dict[str, Any]) -> None:
    rows = {(r["backend"], r["variant"]): r for r in results["bursts_summary"]}
    assert set(rows) == {(b, v) for b in QUICK_BACKENDS for v in VARIANTS}
    for r in rows.values():
        assert r["errors"] == 0, r
        assert r["bursts"] == QUICK.bursts * QUICK.burst_reps
        assert r["units"] == QUICK.burst_factor * QUICK.burst_size
        assert 0 < r["median_ms"] <= r["p99_ms"]
    for backend in QUICK_BACKENDS:
        # connman keeps its overflow: over all the bursts it opens it once at most, never again.
        # PyMongo opens two at a time (so its warm-up may leave part of `size` to its background
        # fill, counted here), but never beyond the maximum.
        limit = QUICK.burst_overflow + (QUICK.burst_size if backend.startswith("mongo") else 0)
        for variant in ("connman", "fast"):
            assert rows[(backend, variant)]["opened_total"] <= limit, backend
    # SQLAlchemy alone closes its overflow on return: every burst reopens it.
    hand = rows[("postgres-asyncpg", "hand")]
    assert hand["opened_per_burst_after_first"] == QUICK.burst_overflow
    ratios = {r["backend"]: r for r in results["bursts_ratios"]}
    assert ratios["postgres-asyncpg"]["fast/raw"] > 0
    assert ratios["postgres-asyncpg"]["connman/hand"] > 0


def test_markdown_names_every_backend_variant_and_the_secantus_caveat(quick_run: Path) -> None:
    md = (quick_run / "results.md").read_text()
    for name in (*QUICK_BACKENDS, *VARIANTS, "hand_fn", "connman_maxwait"):
        assert name in md
    for section in ("## Headline", "## Checkout", "## Point read", "## Point write",
                    "## FastAPI endpoint", "## Pool exhaustion", "## Bursts", "## Cold start"):
        assert section in md
    assert "SecantusDB" in md
    assert "not from mongod" in md


def test_cli_options_and_helpers() -> None:
    args = parser().parse_args(["--quick", "--backends", "sqlite-aiosqlite", "--out", "x",
                                "--urls", "postgres=postgresql://u@127.0.0.1:1/db"])
    assert args.quick
    assert args.backends == ["sqlite-aiosqlite"]
    assert args.out == Path("x")
    assert parse_urls(args.urls) == {"postgres": "postgresql://u@127.0.0.1:1/db"}
    with pytest.raises(ValueError, match="unknown server kind"):
        parse_urls(["redis=redis://127.0.0.1"])
    with pytest.raises(SystemExit):
        parser().parse_args(["--backends", "oracle"])
    assert rotate("ABCD", 1) == ["B", "C", "D", "A"]
    assert rotate("ABCD", 4) == ["A", "B", "C", "D"]


def test_bench_names_its_extra_when_a_dependency_is_missing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    require_bench()  # this environment has them all
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(MissingDependency, match=r"matplotlib, uvicorn: pip install 'connman\[bench\]'"):
        require_bench()
    monkeypatch.setitem(sys.modules, "asyncmy", None)
    with pytest.raises(MissingDependency, match=r"asyncmy: pip install 'connman\[bench,mysql\]'"):
        require_drivers(["asyncpg", "asyncmy"])
