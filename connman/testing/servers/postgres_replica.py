"""A throwaway PostgreSQL hot-standby streaming replica of a throwaway primary, and the WAL positions
it waits on (``wait_replicated``)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping

from .base import LocalServer, ServerError
from .postgres import PostgresServer, _pg_tool

__all__ = ["PostgresReplicaServer"]


# Settings a hot standby must have at least as high as its primary (or it refuses to start).
_HOT_STANDBY_MINIMUMS = ("max_connections", "max_worker_processes", "max_wal_senders",
                         "max_prepared_transactions", "max_locks_per_transaction")


def _parse_lsn(text: str) -> int:
    """``'0/3000148'`` -> a byte position."""
    high, _, low = text.strip().partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def _format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def _wal_record_end(lsn: int, block_size: int, segment_size: int) -> int:
    """Turn an insert position just past a WAL page header back into the page boundary.

    ``pg_current_wal_insert_lsn()`` points past the header of a new page when the last record ended
    exactly at a page boundary, while a standby's ``pg_last_wal_replay_lsn()`` is that record's end,
    the boundary itself. No record ends inside a page header, so the two mean the same place.
    """
    offset = lsn % block_size
    header = 40 if lsn % segment_size < block_size else 24  # long / short page header (64-bit)
    return lsn - offset if offset == header else lsn


class PostgresReplicaServer(LocalServer):
    """A throwaway hot-standby streaming replica of a running :class:`PostgresServer`.

    ``start()`` copies the primary with ``pg_basebackup -R -X stream`` (trust auth over loopback:
    ``initdb`` allows replication from 127.0.0.1 and PostgreSQL 15's defaults, ``wal_level=replica``
    and ``max_wal_senders=10``, need no extra primary settings), then runs ``postgres`` on its own
    random port as a read-only hot standby streaming from the primary. ``restart()`` and ``kill()``
    keep the copy; a ``start()`` after ``stop()`` takes a fresh one. Writes on the replica fail with
    SQLSTATE 25006 (``read_only_sql_transaction``).

    Replication is asynchronous: after writing on the primary, call :meth:`wait_replicated` before
    reading the rows on the replica.
    """

    name = "postgres-replica"
    _scheme = "postgresql"
    _database = "postgres"
    _user_name = "postgres"
    _stop_signal = signal.SIGINT  # "fast" shutdown: don't wait for clients to leave
    user = "postgres"

    def __init__(self, primary: PostgresServer, *, max_connections: int | None = None,
                 settings: Mapping[str, str] | None = None, port: int | None = None,
                 start_timeout: float = 30.0, stop_timeout: float = 10.0) -> None:
        super().__init__(port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.primary = primary
        self.max_connections = primary.max_connections if max_connections is None else max_connections
        self.settings = dict(settings or {})

    def _initialize(self, deadline: float) -> None:
        assert self.data_dir is not None
        if not self.primary.running:
            raise self._error(f"its primary {self.primary!r} is not running")
        # --checkpoint=fast: the default spread checkpoint paces its writes over minutes (a
        # primary with a few MB of fresh rows took 60 s instead of 0.6 s).
        self._run([_pg_tool("pg_basebackup"), "-h", self.primary.host, "-p", str(self.primary.port),
                   "-U", self.primary.user, "-D", str(self.data_dir), "-R", "-X", "stream",
                   "--no-sync", "--checkpoint=fast"], deadline)

    def _command(self) -> list[str]:
        assert self.tmpdir is not None
        assert self.data_dir is not None
        inherited = {key: value for key, value in self.primary.settings.items()
                     if key in _HOT_STANDBY_MINIMUMS}
        settings = {
            **inherited,
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.tmpdir),
            "max_connections": str(self.max_connections),
            "hot_standby": "on",
            "fsync": "off",
            "full_page_writes": "off",
            "synchronous_commit": "off",
            "wal_retrieve_retry_interval": "200ms",  # reconnect soon after the primary restarts
            **self.settings,
        }
        cmd = [_pg_tool("postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            cmd += ["-c", f"{key}={value}"]
        return cmd

    def _probe(self, timeout: float) -> str | None:
        # pg_isready says "rejecting" until the standby has reached a consistent state.
        return self._check([_pg_tool("pg_isready"), "-q", "-h", self.host, "-p", str(self.port),
                            "-U", self.user, "-d", self._database,
                            "-t", str(max(1, int(timeout)))], timeout)

    def _netloc(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def _psql(self, server: LocalServer, sql: str, timeout: float) -> str:
        cmd = [_pg_tool("psql"), "-X", "-w", "-q", "-A", "-t", "-h", server.host,
               "-p", str(server.port), "-U", self.user, "-d", self._database, "-c", sql]
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=max(0.1, timeout), check=False,
                                  env={**os.environ, "PGCONNECT_TIMEOUT": str(max(2, int(timeout)))})
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"psql on {server.name} {server.host}:{server.port} timed out "
                               f"running {sql!r}") from None
        if done.returncode != 0:
            out = done.stderr.decode(errors="replace").strip()
            raise ServerError(f"psql on {server.name} {server.host}:{server.port} failed "
                              f"running {sql!r}: {out or f'exit code {done.returncode}'}")
        return done.stdout.decode().strip()

    def wait_replicated(self, timeout: float = 10.0) -> None:
        """Wait until the replica has replayed all the WAL the primary had written when called.

        Reads the primary's ``pg_current_wal_insert_lsn()`` (not ``pg_current_wal_lsn()``: with
        ``synchronous_commit=off`` a just-committed record may not be written out yet), then polls
        the replica's ``pg_last_wal_replay_lsn()`` until it is at least that far. Every transaction
        committed on the primary before the call is then visible on the replica. Raises
        ``TimeoutError`` after ``timeout`` seconds, ``ServerError`` when a server does not answer.
        """
        deadline = time.monotonic() + timeout
        if not self.running:
            raise ServerError(f"{self!r} is not running")
        row = self._psql(self.primary, "SELECT pg_current_wal_insert_lsn(), "
                         "current_setting('wal_block_size'), "
                         "pg_size_bytes(current_setting('wal_segment_size'))", timeout)
        lsn, block_size, segment_size = row.split("|")
        target = _wal_record_end(_parse_lsn(lsn), int(block_size), int(segment_size))
        delay = 0.01
        replayed = ""
        while True:
            remaining = deadline - time.monotonic()
            replayed = self._psql(self, "SELECT pg_last_wal_replay_lsn()", max(0.1, remaining))
            if replayed and _parse_lsn(replayed) >= target:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name} on {self.host}:{self.port} replayed WAL up to "
                                   f"{replayed or 'nothing'}, not {_format_lsn(target)} of the "
                                   f"primary, after {timeout:g}s")
            time.sleep(min(delay, remaining))
            delay = min(delay * 1.5, 0.1)
