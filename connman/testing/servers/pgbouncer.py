"""A throwaway PgBouncer in front of a throwaway PostgreSQL, checked with ``psql`` on its admin
console."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from pathlib import Path

from ._process import _find_binary
from .base import LocalServer, ServerError
from .postgres import PostgresServer, _pg_tool

__all__ = ["PgBouncerServer"]


class PgBouncerServer(LocalServer):
    """A throwaway PgBouncer in front of a PostgresServer (trust auth, any database name)."""

    name = "pgbouncer"
    _scheme = "postgresql"
    _database = "postgres"
    _user_name = "postgres"
    _stop_signal = signal.SIGTERM  # immediate shutdown (SIGINT waits for clients in 1.18)

    IGNORE_STARTUP_PARAMETERS = ("extra_float_digits,options,statement_timeout,"
                                 "idle_in_transaction_session_timeout")
    """Startup parameters asyncpg and SQLAlchemy send that PgBouncer should not reject."""

    def __init__(self, upstream: PostgresServer, pool_mode: str = "transaction", *,
                 default_pool_size: int = 20, max_client_conn: int = 1000,
                 settings: Mapping[str, str] | None = None, port: int | None = None,
                 start_timeout: float = 30.0, stop_timeout: float = 10.0) -> None:
        if pool_mode not in ("transaction", "session", "statement"):
            raise ValueError(f"pool_mode must be 'transaction', 'session' or 'statement', not {pool_mode!r}")
        super().__init__(port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.upstream = upstream
        self.pool_mode = pool_mode
        self.default_pool_size = default_pool_size
        self.max_client_conn = max_client_conn
        self.settings = dict(settings or {})
        self.user = upstream.user

    @property
    def ini_path(self) -> Path | None:
        """The generated ``pgbouncer.ini``."""
        return self.tmpdir / "pgbouncer.ini" if self.tmpdir is not None else None

    def _initialize(self, deadline: float) -> None:
        self._write_config()

    def _write_config(self) -> None:
        assert self.tmpdir is not None
        assert self.ini_path is not None
        userlist = self.tmpdir / "userlist.txt"
        userlist.write_text(f'"{self.user}" ""\n')
        settings = {
            "listen_addr": self.host,
            "listen_port": str(self.port),
            "unix_socket_dir": str(self.tmpdir),
            "auth_type": "trust",
            "auth_file": str(userlist),
            "admin_users": self.user,
            "stats_users": self.user,
            "pool_mode": self.pool_mode,
            "default_pool_size": str(self.default_pool_size),
            "max_client_conn": str(self.max_client_conn),
            "ignore_startup_parameters": self.IGNORE_STARTUP_PARAMETERS,
            "server_login_retry": "1",
            "server_connect_timeout": "5",
            "pidfile": str(self.tmpdir / "pgbouncer.pid"),
            **self.settings,
        }
        lines = ["[databases]",
                 f"* = host={self.upstream.host} port={self.upstream.port} user={self.user}",
                 "", "[pgbouncer]", *(f"{k} = {v}" for k, v in settings.items()), ""]
        self.ini_path.write_text("\n".join(lines))
        for path in (userlist, self.ini_path):
            self._chown(path)

    def _command(self) -> list[str]:
        assert self.ini_path is not None
        exe = _find_binary("pgbouncer", "/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer")
        if exe is None:
            raise ServerError("pgbouncer executable not found")
        return [exe, str(self.ini_path)]

    def _probe(self, timeout: float) -> str | None:
        return self._check([_pg_tool("psql"), "-X", "-w", "-q", "-A", "-t", "-h", self.host,
                            "-p", str(self.port), "-U", self.user, "-d", "pgbouncer",
                            "-c", "SHOW VERSION"], timeout,
                           env={"PGCONNECT_TIMEOUT": str(max(2, int(timeout)))})

    def _netloc(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"
