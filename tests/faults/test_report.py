"""`python -m tests.faults.report --merge`: a partial run replaces its rows and keeps the others."""

from __future__ import annotations

from .report import _rows, merge_reports, render
from .scenarios import SCENARIOS


def fig(scenario: str, backend: str, *, ok: int, problems: list[str] | None = None,
        sample: str | None = None) -> dict[str, object]:
    out: dict[str, object] = {"scenario": scenario, "backend": backend, "requests": ok,
                              "ok": ok, "wall_s": 1.0, "commit": "abc1234",
                              "problems": problems or []}
    if sample:
        out["error_samples"] = {sample: f"message of {sample}"}
    return out


def test_merge_replaces_redone_rows_keeps_the_rest_and_recounts() -> None:
    old = render([fig("server_restart", "postgres", ok=10, sample="Old"),
                  fig("frozen_server", "postgres", ok=11, problems=["broken"]),
                  fig("sustained_load", "sqlite", ok=12)],
                 full=True, command="python -m tests.faults.report --full")
    new = render([fig("frozen_server", "postgres", ok=99, sample="New"),
                  fig("blackhole", "mysql-asyncmy", ok=98)],
                 full=True, command="python -m tests.faults.report --full")
    merged = merge_reports(old, new, command="python -m tests.faults.report --full --only x")
    rows = _rows(merged)
    title = {s.name: s.title for s in SCENARIOS.values()}
    assert list(rows) == [(title["server_restart"], "postgres"),
                          (title["frozen_server"], "postgres"),
                          (title["blackhole"], "mysql-asyncmy"),
                          (title["sustained_load"], "sqlite")]  # in the scenarios' order
    assert "| 99 |" in rows[(title["frozen_server"], "postgres")]  # redone
    assert "| 10 |" in rows[(title["server_restart"], "postgres")]  # kept
    assert "- Result: 4 of 4 runs pass" in merged  # the broken row was redone and passes now
    assert "- Merged: `python -m tests.faults.report --full --only x` redid 2 rows" in merged
    assert "`Old`: message of Old" in merged
    assert "`New`: message of New" in merged
    assert merged.count("| scenario | backend |") == 1
