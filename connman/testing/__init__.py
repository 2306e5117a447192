"""Test helpers: throwaway real database servers (see `connman.testing.servers`)."""

from __future__ import annotations

from connman.testing.servers import (
    ExternalServer,
    LocalServer,
    MariaDBServer,
    MongoWireServer,
    PgBouncerServer,
    PostgresReplicaServer,
    PostgresServer,
    Server,
    ServerError,
    free_port,
    server_from_env,
)

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
