"""A throwaway MariaDB server (``mariadb-install-db`` + ``mariadbd``), checked with the ``mariadb``
client."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ._process import _find_binary
from .base import LocalServer, ServerError

__all__ = ["MariaDBServer"]


class MariaDBServer(LocalServer):
    """A throwaway MariaDB server; user ``root`` with no password, database ``connman``."""

    name = "mysql"
    _scheme = "mysql"
    _database = "connman"
    _user_name = "mysql"
    user = "root"

    def __init__(self, *, max_connections: int = 200, options: Sequence[str] = (),
                 port: int | None = None, start_timeout: float = 30.0,
                 stop_timeout: float = 10.0) -> None:
        super().__init__(port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.max_connections = max_connections
        self.options = list(options)

    @property
    def socket_path(self) -> Path | None:
        """The server's Unix socket."""
        return self.tmpdir / "mysqld.sock" if self.tmpdir is not None else None

    def _initialize(self, deadline: float) -> None:
        assert self.data_dir is not None
        exe = _find_binary("mariadb-install-db", "/usr/bin/mariadb-install-db") or _find_binary(
            "mysql_install_db", "/usr/bin/mysql_install_db")
        if exe is None:
            raise ServerError("mariadb-install-db not found")
        self._run([exe, "--no-defaults", f"--datadir={self.data_dir}",
                   "--auth-root-authentication-method=normal", "--skip-test-db",
                   "--skip-name-resolve"], deadline)

    def _command(self) -> list[str]:
        assert self.tmpdir is not None
        assert self.data_dir is not None
        exe = _find_binary("mariadbd", "/usr/sbin/mariadbd", "/usr/sbin/mysqld")
        if exe is None:
            raise ServerError("mariadbd not found")
        return [exe, "--no-defaults", f"--datadir={self.data_dir}",
                f"--port={self.port}", f"--bind-address={self.host}",
                f"--socket={self.socket_path}", f"--pid-file={self.tmpdir / 'mariadbd.pid'}",
                f"--tmpdir={self.tmpdir}", "--skip-log-bin", "--skip-name-resolve",
                f"--max-connections={self.max_connections}",
                "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
                "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0",
                "--innodb-buffer-pool-size=64M",
                "--innodb-temp-data-file-path=ibtmp1:1M:autoextend", *self.options]

    def _probe(self, timeout: float) -> str | None:
        exe = _find_binary("mariadb", "/usr/bin/mariadb") or _find_binary("mysql", "/usr/bin/mysql")
        if exe is None:
            return "the mariadb client is not installed"
        return self._check([exe, "--no-defaults", "--protocol=tcp", "-h", self.host,
                            "-P", str(self.port), "-u", self.user,
                            f"--connect-timeout={max(1, int(timeout))}",
                            "-e", f"CREATE DATABASE IF NOT EXISTS `{self._database}`"], timeout)

    def _netloc(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"
