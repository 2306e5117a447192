"""Session-level state behind a transaction-mode pooler (`external_pooler: pgbouncer`): warned once.

A transaction-mode PgBouncer gives each transaction whichever server connection is free, so state
a statement leaves on the *server session* (not the transaction) lands on other clients' work, and
the next transaction of this client may not see it. Each statement of such a pool (session path
and fast path) is matched against the session-level forms below; the first one found is logged
as a warning naming the pool, the construct and the transaction-scoped form to use. Only the
statement text is read (no parsing): a form built from bound parameters is not seen.
"""

from __future__ import annotations

import logging
import re

__all__ = ["PoolerGuard", "session_state"]

logger = logging.getLogger("connman")

_LEAD = r"^\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*"
_FORMS: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(_LEAD + r"SET\s+(?!LOCAL\b|TRANSACTION\b|CONSTRAINTS\b)", re.I | re.S),
     "SET without LOCAL", "SET LOCAL, inside the unit's transaction"),
    (re.compile(r"\bset_config\s*\((?:[^()]|\([^()]*\))*,\s*(?:false|'f'|'false')\s*\)",
                re.I | re.S),
     "set_config(..., false)", "set_config(..., true), which lasts until the transaction ends"),
    (re.compile(r"\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\(", re.I),
     "a session advisory lock (pg_advisory_lock)", "pg_advisory_xact_lock / "
     "pg_try_advisory_xact_lock, released at the end of the transaction"),
    (re.compile(_LEAD + r"CREATE\s+(?:(?:GLOBAL|LOCAL)\s+)?TEMP(?:ORARY)?\s+TABLE\b"
                r"(?!.*\bON\s+COMMIT\s+DROP\b)", re.I | re.S),
     "CREATE TEMP TABLE", "CREATE TEMP TABLE ... ON COMMIT DROP"),
    (re.compile(_LEAD + r"LISTEN\b", re.I | re.S),
     "LISTEN", "a direct (session-mode) connection for LISTEN/NOTIFY"),
    (re.compile(_LEAD + r"PREPARE\b", re.I | re.S),
     "PREPARE", "unnamed (protocol-level) statements, as connman configures"),
    (re.compile(_LEAD + r"DECLARE\b.*\bWITH\s+HOLD\b", re.I | re.S),
     "DECLARE ... WITH HOLD", "a cursor without WITH HOLD, inside the transaction"),
)


def session_state(sql: str) -> tuple[str, str] | None:
    """(the session-level construct, the transaction-scoped form to use) if `sql` leaves state
    on the server session, else None."""
    for pattern, what, instead in _FORMS:
        if pattern.search(sql):
            return what, instead
    return None


class PoolerGuard:
    """Checks one pool's statements; logs one warning for the pool, the first time."""

    __slots__ = ("pool", "pooler", "warned")

    def __init__(self, pool: str, pooler: str) -> None:
        self.pool = pool
        self.pooler = pooler
        self.warned = False

    def check(self, sql: object) -> None:
        """Warn (once per pool) if `sql` leaves state on the server session. Never raises."""
        if self.warned or not isinstance(sql, str):
            return
        found = session_state(sql)
        if found is None:
            return
        self.warned = True
        what, instead = found
        logger.warning(
            "connman: pool %r: %s leaves state on the server session, but external_pooler=%r "
            "(transaction pooling) hands each transaction any server connection: it lands on "
            "other clients' work and may be missing from this one's next transaction. Use %s. "
            "(Warned once per pool.)", self.pool, what, self.pooler, instead)
