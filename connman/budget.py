"""Connection budgets across workers and replicas, and pool sizing advice."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ._url import split_scheme
from .config import PoolConfig

__all__ = ["BudgetLine", "compute_budget", "server_key", "size_advice"]


def server_key(config: PoolConfig) -> str:
    """Which server a pool talks to (`host:port` list, or the SQLite file), for grouping."""
    url = config.url.get_secret_value()
    _, rest = split_scheme(url)
    if config.driver_name == "aiosqlite":
        return "sqlite:" + rest
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    return authority.rsplit("@", 1)[-1].lower()


@dataclass(frozen=True)
class BudgetLine:
    """One server's connection budget: what the pools on it may open against what it allows."""

    server: str
    pools: tuple[str, ...]
    per_process: int
    workers: int
    replicas: int
    total: int
    limit: int | None
    over: bool

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def server_limit(info: Mapping[str, Any]) -> int | None:
    """The connections a server accepts for this app, from a `Pool.server_info()` dict."""
    if info.get("max_connections") is None:
        return None
    return int(info["max_connections"]) - int(info.get("reserved") or 0)


def compute_budget(configs: Mapping[str, PoolConfig], limits: Mapping[str, int | None], *,
                   workers: int, replicas: int) -> list[BudgetLine]:
    """Group pools by server, multiply their `size + overflow` by workers × replicas, compare.

    `limits` maps a server key to the connections it accepts for this app (PostgreSQL:
    `max_connections - superuser_reserved_connections`; MySQL: `max_connections`), or None.
    """
    groups: dict[str, list[str]] = {}
    for name, cfg in configs.items():
        groups.setdefault(server_key(cfg), []).append(name)
    lines = []
    for key, names in groups.items():
        per_process = sum(configs[n].max_size for n in names)
        total = per_process * workers * replicas
        limit = limits.get(key)
        lines.append(BudgetLine(key, tuple(names), per_process, workers, replicas, total, limit,
                                limit is not None and total > limit))
    return lines


def size_advice(*, concurrency: int, query_ms: float, target_ms: float, workers: int = 1,
                replicas: int = 1, limit: int | None = None) -> dict[str, Any]:
    """Suggest `size`/`overflow` per worker from pool ≈ concurrency × query time ÷ target time.

    The steady need is the number of connections busy at once; `overflow` covers bursts of half
    that again. With a server `limit`, the suggestion is capped so all workers fit under it.
    """
    if concurrency < 1 or query_ms <= 0 or target_ms <= 0 or workers < 1 or replicas < 1:
        raise ValueError("concurrency, query_ms, target_ms, workers and replicas must be positive")
    busy = concurrency * query_ms / target_ms
    processes = workers * replicas
    per_worker = max(1, math.ceil(busy / processes))
    size = per_worker
    overflow = max(1, math.ceil(per_worker / 2))
    capped = False
    if limit is not None:
        room = max(1, limit // processes)
        if size + overflow > room:
            capped = True
            size = max(1, min(size, math.ceil(room * 2 / 3)))
            overflow = max(0, room - size)
    return {"busy_connections": round(busy, 2), "processes": processes, "size": size,
            "overflow": overflow, "per_process_max": size + overflow,
            "total_max": (size + overflow) * processes, "limit": limit, "capped": capped}
