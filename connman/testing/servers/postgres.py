"""A throwaway PostgreSQL cluster (``initdb`` + ``postgres``), and where PostgreSQL's tools are
(``CONNMAN_PG_BINDIR``, ``PATH``, ``/usr/lib/postgresql/*/bin``)."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Mapping
from pathlib import Path

from .base import LocalServer, ServerError

__all__ = ["PostgresServer"]


def _postgres_bindir() -> Path | None:
    env = os.environ.get("CONNMAN_PG_BINDIR")
    if env:
        return Path(env)
    for tool in ("postgres", "initdb", "pg_ctl"):
        found = shutil.which(tool)
        if found:
            bindir = Path(os.path.realpath(found)).parent
            if (bindir / "postgres").is_file():
                return bindir

    def version(p: Path) -> tuple[int, ...]:
        name = p.parent.name
        return tuple(int(x) for x in name.split(".") if x.isdigit())

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=version)
    return candidates[-1].parent if candidates else None


def _pg_tool(name: str) -> str:
    bindir = _postgres_bindir()
    if bindir is not None and (bindir / name).is_file():
        return str(bindir / name)
    found = shutil.which(name)
    if found:
        return found
    raise ServerError(f"PostgreSQL tool {name!r} not found (set CONNMAN_PG_BINDIR)")


class PostgresServer(LocalServer):
    """A throwaway PostgreSQL cluster (``initdb`` + ``postgres``), trust auth, user ``postgres``."""

    name = "postgres"
    _scheme = "postgresql"
    _database = "postgres"
    _user_name = "postgres"
    _stop_signal = signal.SIGINT  # "fast" shutdown: don't wait for clients to leave
    user = "postgres"

    def __init__(self, *, max_connections: int = 200, settings: Mapping[str, str] | None = None,
                 port: int | None = None, start_timeout: float = 30.0,
                 stop_timeout: float = 10.0) -> None:
        super().__init__(port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.max_connections = max_connections
        self.settings = dict(settings or {})

    def _initialize(self, deadline: float) -> None:
        assert self.data_dir is not None
        self._run([_pg_tool("initdb"), "-D", str(self.data_dir), "-U", self.user, "--auth=trust",
                   "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"], deadline)

    def _command(self) -> list[str]:
        assert self.tmpdir is not None
        assert self.data_dir is not None
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.tmpdir),
            "max_connections": str(self.max_connections),
            "fsync": "off",
            "full_page_writes": "off",
            "synchronous_commit": "off",
            **self.settings,
        }
        cmd = [_pg_tool("postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            cmd += ["-c", f"{key}={value}"]
        return cmd

    def _probe(self, timeout: float) -> str | None:
        return self._check([_pg_tool("pg_isready"), "-q", "-h", self.host, "-p", str(self.port),
                            "-U", self.user, "-d", self._database,
                            "-t", str(max(1, int(timeout)))], timeout)

    def _netloc(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"
