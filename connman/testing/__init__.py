"""Test helpers: throwaway real database servers (`connman.testing.servers`), per-test isolation of
an app's pools (`connman.testing.isolation`) and the pytest plugin (`connman.testing.plugin`)."""

from __future__ import annotations

from connman.testing.isolation import Isolation, app_client, isolated, mark_app, open_pools, point
from connman.testing.pools import mongo_pool, sql_pool
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
    "Isolation",
    "LocalServer",
    "MariaDBServer",
    "MongoWireServer",
    "PgBouncerServer",
    "PostgresReplicaServer",
    "PostgresServer",
    "Server",
    "ServerError",
    "app_client",
    "free_port",
    "isolated",
    "mark_app",
    "mongo_pool",
    "open_pools",
    "point",
    "server_from_env",
    "sql_pool",
]
