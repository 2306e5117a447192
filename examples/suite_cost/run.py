"""Wall time of one 300-test suite with and without connman's pytest plugin, side by side.

    python examples/suite_cost/run.py [--rounds 3]

Starts one throwaway PostgreSQL, then runs the suite alternately in both modes (conftest.py), so
the two share the machine's load: `own` (the app's manager opened once on a test database, every
table truncated after each test) and `plugin` (connman.testing.plugin: pools opened once per
session, each test rolled back). Prints the wall time of each run and the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from connman.testing import PostgresServer

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"own": [], "plugin": []}
    with PostgresServer() as server:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CONNMAN_", "COST_"))}
        base["PYTHONPATH"] = os.pathsep.join([str(HERE.parent.parent), base.get("PYTHONPATH", "")])
        for r in range(args.rounds):
            for mode in ("own", "plugin") if r % 2 == 0 else ("plugin", "own"):
                env = dict(base, COST_MODE=mode)
                if mode == "own":
                    env["COST_DB_URL"] = server.url(driver="asyncpg")
                else:
                    env["CONNMAN_TEST_POSTGRES_URL"] = server.url()
                start = time.perf_counter()
                proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x"], cwd=HERE,
                                      env=env, capture_output=True, text=True)
                took = time.perf_counter() - start
                last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
                if proc.returncode != 0:
                    sys.exit(f"{mode} failed:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
                times[mode].append(took)
                print(f"round {r + 1} {mode:>6}: {took:6.2f} s  ({last})", flush=True)
    own, plugin = statistics.median(times["own"]), statistics.median(times["plugin"])
    print(f"\nmedian wall time, 300 tests: own {own:.2f} s, plugin {plugin:.2f} s "
          f"({(plugin / own - 1) * 100:+.1f} %); load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
