"""What `connman bench` needs installed, checked before anything runs, with the extra to install."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from ..errors import MissingDependency

__all__ = ["BENCH_MODULES", "DRIVER_MODULES", "missing", "require_bench", "require_drivers"]

BENCH_MODULES = ("sqlalchemy", "fastapi", "rich", "matplotlib", "uvicorn", "httpx")
"""What the suite itself imports: the hand-written variants, the HTTP scenario, plots, progress."""
DRIVER_MODULES = {"asyncpg": ("asyncpg", "postgres"), "psycopg": ("psycopg_pool", "psycopg-bench"),
                  "aiomysql": ("aiomysql", "mysql"),
                  "asyncmy": ("asyncmy", "mysql"), "aiosqlite": ("aiosqlite", "sqlite"),
                  "pymongo": ("pymongo", "mongo"), "motor": ("motor", "motor")}
"""Driver name -> (module, connman extra that installs it)."""


def missing(modules: Iterable[str]) -> list[str]:
    """The modules of `modules` that cannot be imported here."""
    out = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name)
    return out


def require_bench() -> None:
    """Raise `MissingDependency` naming the `bench` extra if a module the suite needs is missing."""
    absent = missing(BENCH_MODULES)
    if absent:
        raise MissingDependency(f"connman bench needs {', '.join(absent)}: "
                                "pip install 'connman[bench]'")


def require_drivers(drivers: Iterable[str]) -> None:
    """Raise `MissingDependency` naming the extras of the drivers these backends need."""
    absent = [(mod, extra) for mod, extra in (DRIVER_MODULES[d] for d in dict.fromkeys(drivers))
              if missing([mod])]
    if absent:
        extras = ",".join(dict.fromkeys(extra for _, extra in absent))
        raise MissingDependency(
            f"connman bench: the chosen backends need {', '.join(m for m, _ in absent)}: "
            f"pip install 'connman[bench,{extras}]' (or choose others with --backends)")
