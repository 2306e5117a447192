"""Where the suite runs: the servers (given by URL or started throwaway) and the machine."""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from .targets import Backend, Target

__all__ = ["SECANTUS_NOTE", "SERVER_KINDS", "Servers", "environment", "parse_urls"]

SECANTUS_NOTE = (
    "Mongo numbers come from SecantusDB, a MongoDB-wire-compatible server written in Python, "
    "not from mongod: they show the client-side cost of each variant (connman vs a bare "
    "PyMongo/Motor client) on the same server, not MongoDB's performance.")
SERVER_KINDS = ("postgres", "pgbouncer", "mysql", "mongo")


class Servers:
    """The servers a run needs: `--urls`, then `CONNMAN_TEST_<KIND>_URL`, else throwaway ones."""

    def __init__(self, kinds: set[str], urls: Mapping[str, str]) -> None:
        self.kinds = kinds
        self.urls = dict(urls)
        self.servers: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.sources: dict[str, str] = {}
        self.sqlite_dir = Path(tempfile.mkdtemp(prefix="connman-bench-sqlite-"))

    async def start(self) -> None:
        """Start every needed throwaway server at once (PgBouncer after its PostgreSQL)."""
        from connman.testing.servers import ExternalServer, server_from_env

        for kind in sorted(self.kinds):
            url = self.urls.get(kind)
            server = ExternalServer(kind, url) if url else server_from_env(kind)
            if server is not None:
                self.servers[kind] = server
                self.sources[kind] = "external"
        await asyncio.gather(*(self._launch(k) for k in ("postgres", "mysql", "mongo")
                               if k in self.kinds and k not in self.servers))
        if "pgbouncer" in self.kinds and "pgbouncer" not in self.servers:
            await self._launch("pgbouncer")

    async def _launch(self, kind: str) -> None:
        from connman.testing.servers import (
            MariaDBServer,
            MongoWireServer,
            PgBouncerServer,
            PostgresServer,
        )

        if kind == "pgbouncer":
            upstream = self.servers.get("postgres")
            if upstream is None:
                upstream = PostgresServer()
                await self._start(kind + "-upstream", upstream)
            if not isinstance(upstream, PostgresServer):
                self.errors[kind] = ("a throwaway PgBouncer needs a throwaway PostgreSQL; with an "
                                     "external one, set CONNMAN_TEST_PGBOUNCER_URL or --urls "
                                     "pgbouncer=...")
                return
            await self._start(kind, PgBouncerServer(upstream, pool_mode="transaction"))
            return
        factory = {"postgres": PostgresServer, "mysql": MariaDBServer, "mongo": MongoWireServer}
        await self._start(kind, factory[kind]())

    async def _start(self, kind: str, server: Any) -> None:
        try:
            await asyncio.to_thread(server.start)
        except Exception as exc:
            self.errors[kind] = f"{type(exc).__name__}: {exc}"
            return
        self.servers[kind] = server
        self.sources[kind] = "throwaway"

    async def fresh(self, kind: str) -> None:
        """Replace a throwaway server by a newly started one (an external one is kept)."""
        if self.sources.get(kind) != "throwaway":
            return
        old = self.servers.pop(kind)
        await asyncio.to_thread(old.stop)
        await self._launch(kind)

    def stop(self) -> None:
        """Stop the throwaway servers (PgBouncer first) and remove the SQLite dir."""
        for kind in ("pgbouncer", "pgbouncer-upstream", "mongo", "mysql", "postgres"):
            if self.sources.get(kind) == "throwaway":
                self.servers[kind].stop()
        shutil.rmtree(self.sqlite_dir, ignore_errors=True)

    def target(self, backend: Backend) -> Target:
        """Where `backend` connects; RuntimeError with the reason when its server is missing."""
        if not backend.server:
            return Target(backend, f"sqlite+aiosqlite:///{self.sqlite_dir}/{backend.name}.db")
        server = self.servers.get(backend.server)
        if server is None:
            raise RuntimeError(f"{backend.server} server unavailable: "
                               f"{self.errors.get(backend.server, 'not started')}")
        if backend.family == "mongo":
            return Target(backend, server.url(database="connman_bench"))
        return Target(backend, server.url(driver=backend.driver))


def environment() -> dict[str, Any]:
    """Python, platform, CPU count and the versions of connman and every driver."""
    packages = ("connman", "sqlalchemy", "greenlet", "asyncpg", "psycopg", "psycopg-pool",
                "aiomysql", "asyncmy",
                "aiosqlite", "pymongo", "motor", "fastapi", "starlette", "uvicorn", "httpx",
                "pydantic", "secantusdb")
    versions: dict[str, str | None] = {}
    for p in packages:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    import sqlite3

    return {
        "python": sys.version.split()[0], "implementation": platform.python_implementation(),
        "platform": platform.platform(), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
        "sqlite_library": sqlite3.sqlite_version, "packages": versions, "git": _git(),
        "load_average_at_start": list(os.getloadavg()),
    }


def _git() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True).stdout
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "connman"],
                               capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return head.strip() + (" (connman/ has uncommitted changes)" if dirty.strip() else "")


def parse_urls(urls: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """`{"postgres": url}` or `["postgres=url", ...]` -> a mapping; unknown kinds are an error."""
    if urls is None:
        return {}
    pairs: dict[str, str] = {}
    if isinstance(urls, Mapping):
        pairs = dict(urls)
    else:
        for item in urls:
            kind, sep, url = item.partition("=")
            if not sep or not url:
                raise ValueError(f"--urls takes KIND=URL, got {item!r}")
            pairs[kind.strip()] = url.strip()
    unknown = sorted(set(pairs) - set(SERVER_KINDS))
    if unknown:
        raise ValueError(f"unknown server kind(s) {unknown}; known: {', '.join(SERVER_KINDS)}")
    return pairs
