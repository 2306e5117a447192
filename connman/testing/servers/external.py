"""Servers someone else runs, given by URL (``CONNMAN_TEST_<KIND>_URL``): the same interface as the
throwaway ones, with start/stop doing nothing and restart/kill refused."""

from __future__ import annotations

import os
from typing import Self
from urllib.parse import parse_qsl, unquote, urlsplit

from .base import Server

__all__ = ["ExternalServer", "server_from_env"]

_ENV_VARS = {
    "postgres": "CONNMAN_TEST_POSTGRES_URL",
    "mysql": "CONNMAN_TEST_MYSQL_URL",
    "pgbouncer": "CONNMAN_TEST_PGBOUNCER_URL",
    "mongo": "CONNMAN_TEST_MONGO_URL",
}


_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mongodb": 27017}


class ExternalServer(Server):
    """A server someone else runs, given by URL; start/stop do nothing, restart/kill refuse."""

    def __init__(self, name: str, url: str, env_var: str | None = None) -> None:
        parts = urlsplit(url)
        self.name = name
        self.env_var = env_var
        # mongodb+srv:// is a scheme of its own; for SQL URLs the part after "+" is the driver.
        self._driver_in_scheme = not parts.scheme.startswith("mongodb")
        scheme = parts.scheme.split("+", 1)[0] if self._driver_in_scheme else parts.scheme
        self._scheme = "postgresql" if scheme == "postgres" else scheme
        self._raw_netloc = parts.netloc
        self._database = unquote(parts.path.lstrip("/"))
        self._query = dict(parse_qsl(parts.query, keep_blank_values=True))
        # A mongodb:// URL may list several hosts: host and port are the first one's.
        first = urlsplit("//" + parts.netloc.rsplit("@", 1)[-1].split(",", 1)[0])
        self.host = first.hostname or ""
        try:
            port = first.port
        except ValueError:
            port = None
        self.port = port or _DEFAULT_PORTS.get(self._scheme.split("+", 1)[0], 0)

    @property
    def running(self) -> bool:
        """Always True: an external server is assumed to be up."""
        return True

    def start(self) -> Self:
        """Do nothing: the server is run elsewhere."""
        return self

    def stop(self) -> None:
        """Do nothing: the server is run elsewhere."""

    def _refuse(self, what: str) -> NotImplementedError:
        source = f" (from ${self.env_var})" if self.env_var else ""
        hint = f"; unset {self.env_var} to use a throwaway server" if self.env_var else ""
        return NotImplementedError(
            f"cannot {what} the external {self.name} server at {self.host}:{self.port}"
            f"{source}: it is not run by connman.testing{hint}")

    def restart(self) -> None:
        """Refuse: an external server cannot be restarted from here."""
        raise self._refuse("restart")

    def kill(self) -> None:
        """Refuse: an external server cannot be killed from here."""
        raise self._refuse("kill")

    def _netloc(self) -> str:
        return self._raw_netloc


def server_from_env(kind: str) -> Server | None:
    """The external server named by ``CONNMAN_TEST_<KIND>_URL``, or None when it is not set."""
    try:
        var = _ENV_VARS[kind]
    except KeyError:
        raise ValueError(f"unknown server kind {kind!r}; expected one of "
                         f"{', '.join(sorted(_ENV_VARS))}") from None
    url = os.environ.get(var, "").strip()
    return ExternalServer(kind, url, env_var=var) if url else None
