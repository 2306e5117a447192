"""Throwaway real database servers for tests, benchmarks and the demo.

Modelled on asyncpg's ``asyncpg/cluster.py``: each server starts on a random free loopback port in
its own temp dir (``connman-<name>-*``), is polled until it answers a real request, and is stopped
cleanly: the process, its process group and its descendants are ended and the temp dir removed.
Nothing here is a mock.

Every module of the package imports with the standard library alone: readiness is checked with
each server's own client tool (``pg_isready``, ``mariadb``, ``psql``) or, for the MongoDB-wire
server, a hand-built ``OP_MSG`` ``ping``. An ``atexit`` hook stops every server still running
when the interpreter exits.

When run as root, PostgreSQL and PgBouncer run as the ``postgres`` user and MariaDB as ``mysql``
(they refuse to run as root); the temp dirs are chowned to that user.

One module per job: ``_process`` (ports, the process tree, killing it, finding binaries), ``base``
(the ``Server`` interface and the ``LocalServer`` lifecycle), ``postgres``, ``postgres_replica``,
``pgbouncer``, ``mariadb``, ``mongo`` (one launcher each) and ``external`` (servers given by URL).
Import from ``connman.testing.servers``, not from the modules.
"""

from __future__ import annotations

from ._process import _alive as _alive
from ._process import _descendants as _descendants
from ._process import free_port
from .base import LocalServer, Server, ServerError
from .base import _live as _live
from .external import ExternalServer, server_from_env
from .mariadb import MariaDBServer
from .mongo import MongoWireServer
from .pgbouncer import PgBouncerServer
from .postgres import PostgresServer
from .postgres import _pg_tool as _pg_tool
from .postgres_replica import PostgresReplicaServer
from .postgres_replica import _format_lsn as _format_lsn
from .postgres_replica import _parse_lsn as _parse_lsn
from .postgres_replica import _wal_record_end as _wal_record_end

# Also re-exported (``as``), outside __all__: the private names the suite (tests/, tests/faults/)
# reaches for, the process-tree helpers, the registry of running servers, PostgreSQL's tools and
# WAL positions.

__all__ = [
    "ExternalServer",
    "LocalServer",
    "MariaDBServer",
    "MongoWireServer",
    "PgBouncerServer",
    "PostgresReplicaServer",
    "PostgresServer",
    "Server",
    "ServerError",
    "free_port",
    "server_from_env",
]

# Tracebacks, reprs and docs keep showing the public path, as before the split into modules.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = __name__
del _name, _obj
