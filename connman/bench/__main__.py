"""`python -m connman.bench [--quick] [--backends ...] [--out DIR] [--urls KIND=URL ...]`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import MissingDependency
from .runner import SCENARIOS, run
from .targets import BACKENDS, QUICK_BACKENDS

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    """The command-line options."""
    p = argparse.ArgumentParser(
        prog="python -m connman.bench",
        description="Benchmark connman against hand-written SQLAlchemy/PyMongo code and the raw "
                    "driver pools, on real servers on loopback.")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run in under a minute: concurrency 1 and 10, few operations, "
                        f"one repetition; default backends {', '.join(QUICK_BACKENDS)}")
    p.add_argument("--backends", nargs="+", metavar="NAME", choices=list(BACKENDS),
                   help=f"backends to run (default: all, or the quick set): {', '.join(BACKENDS)}")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                   help="results root; writes <out>/<timestamp>/ and <out>/latest/ "
                        "(default: benchmarks/results)")
    p.add_argument("--urls", nargs="+", metavar="KIND=URL", default=None,
                   help="use running servers instead of throwaway ones: postgres=, pgbouncer=, "
                        "mysql=, mongo= (CONNMAN_TEST_<KIND>_URL works too)")
    p.add_argument("--repetitions", type=int, default=None, metavar="N",
                   help="repetitions per measurement (default: 3 full, 1 quick)")
    p.add_argument("--scenarios", nargs="+", metavar="NAME", choices=list(SCENARIOS),
                   help=f"scenarios to run (default: all): {', '.join(SCENARIOS)}")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; exit 1 when a backend could not be benchmarked."""
    args = parser().parse_args(argv)
    try:
        run_dir = run(quick=args.quick, backends=args.backends, out=args.out, urls=args.urls,
                      repetitions=args.repetitions, progress=not args.no_progress,
                      scenarios=args.scenarios)
    except MissingDependency as exc:  # the one line naming the extra, not a traceback
        print(f"connman bench: {exc}", file=sys.stderr)
        return 2
    results = json.loads((run_dir / "results.json").read_text())
    print(f"results: {run_dir} (and {run_dir.parent / 'latest'})")
    for backend, reason in results["failures"].items():
        print(f"FAILED {backend}: {reason}", file=sys.stderr)
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
