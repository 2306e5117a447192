"""Metrics exporters for connman pools: Prometheus and OpenTelemetry.

Each exporter lives in its own module and imports its library there, so this package imports
without any extra installed:

    from connman.metrics.prometheus import register      # pip install 'connman[prometheus]'
    from connman.metrics.otel import instrument          # pip install 'connman[otel]'

Exporters read `Pool.stats()` (the stable keys of `connman.stats.STAT_KEYS`) and the manager's
events; they label series by pool name and backend only, never by anything from the URL.
"""

from __future__ import annotations

__all__ = ["STAT_HELP"]

# One line of help per stat key, shown by the exporters (HELP in Prometheus).
STAT_HELP: dict[str, str] = {
    "pool_min": "Connections the pool keeps (size).",
    "pool_max": "Most connections the pool may open (size + overflow).",
    "pool_size": "Connections open now, in use or idle.",
    "pool_available": "Connections open and idle now.",
    "requests_active": "Sessions holding a connection now.",
    "requests_waiting": "Sessions waiting for a connection now.",
    "requests_num": "Sessions granted a connection.",
    "requests_queued": "Sessions that had to wait for a connection.",
    "requests_wait_ms": "Time sessions spent waiting for a connection, timed-out waits included.",
    "requests_errors": "Sessions refused: timeouts, too many waiters, pool closed.",
    "requests_timeouts": "Sessions that waited the pool timeout and got PoolTimeout.",
    "requests_rejected": "Sessions refused at once by max_waiting (TooManyWaiters).",
    "requests_unavailable": "Requests that ended in ServerUnavailable (refused, full, locked, read-only).",
    "requests_lost": "Requests whose connection the server ended (ConnectionLost).",
    "usage_ms": "Time connections were held by sessions.",
    "connections_num": "Connection attempts made to the server.",
    "connections_ms": "Time spent establishing connections.",
    "connections_errors": "Connection attempts that failed.",
    "connections_lost": "Open connections found broken (server gone, killed, error).",
    "connections_closed": "Connections closed for any reason.",
    "connections_recycled": "Connections closed because older than recycle.",
    "connections_idle_closed": "Connections closed because unused longer than idle.",
    "leaks_detected": "Leases held longer than leak_threshold.",
}
