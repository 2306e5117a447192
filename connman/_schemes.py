"""URL schemes: the backend, driver and pip extra each names, and the URL as connman uses it."""

from __future__ import annotations

import importlib.util

from ._url import SecretURL, split_libpq_hosts, split_scheme, with_scheme

# URL scheme -> (backend, driver, extra to install)
SCHEMES: dict[str, tuple[str, str, str]] = {
    "postgresql+asyncpg": ("sqlalchemy", "asyncpg", "postgres"),
    "postgresql+psycopg": ("sqlalchemy", "psycopg", "psycopg"),
    "mysql+aiomysql": ("sqlalchemy", "aiomysql", "mysql"),
    "mysql+asyncmy": ("sqlalchemy", "asyncmy", "mysql"),
    "sqlite+aiosqlite": ("sqlalchemy", "aiosqlite", "sqlite"),
    "mongodb": ("mongo", "pymongo", "mongo"),
    "mongodb+srv": ("mongo", "pymongo", "mongo"),
}


# URL schemes that name PostgreSQL but no driver (what hosting platforms hand out), and the async
# drivers they resolve to, in order of preference: psycopg first, as SQLAlchemy 2.1 does for
# `postgresql://`, then asyncpg; the first one installed is used.
DRIVERLESS_POSTGRES = ("postgres", "postgresql")
POSTGRES_PREFERENCE = ("psycopg", "asyncpg")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve_url(url: SecretURL) -> SecretURL:
    """The URL as connman uses it: a driverless `postgres://`/`postgresql://` given the async
    driver installed (psycopg, else asyncpg), and libpq's multi-host address (`h1:5432,h2:5432`)
    moved to `?host=` parameters. ValueError when neither driver is installed."""
    text = url.get_secret_value()
    scheme = url.scheme
    target: str | None = None
    if scheme in DRIVERLESS_POSTGRES:
        driver = next((d for d in POSTGRES_PREFERENCE if _installed(d)), None)
        if driver is None:
            raise ValueError(
                f"{scheme}:// names no driver and neither psycopg nor asyncpg is installed: "
                "pip install 'connman[psycopg]' (postgresql+psycopg://) or 'connman[postgres]' "
                "(postgresql+asyncpg://)")
        target = f"postgresql+{driver}"
    if target is not None:
        text = with_scheme(text, target)
        scheme = target
    if scheme in SCHEMES and SCHEMES[scheme][1] in POSTGRES_PREFERENCE:
        moved = split_libpq_hosts(text, 5432)
        if moved is not None:
            text = moved
    elif scheme in SCHEMES and SCHEMES[scheme][0] == "sqlalchemy" and "," in _authority(text):
        raise ValueError(f"several hosts in one URL: {scheme}:// takes one host")
    return url if text == url.get_secret_value() else SecretURL(text)


def _authority(url: str) -> str:
    rest = split_scheme(url)[1].split("?", 1)[0].split("/", 1)[0]
    return rest.rsplit("@", 1)[-1]


def backend_of(scheme: str) -> tuple[str, str, str]:
    """(backend, driver, extra) for a URL scheme, or a ValueError listing the supported ones."""
    try:
        return SCHEMES[scheme]
    except KeyError:
        supported = ", ".join(f"{s}://" for s in SCHEMES)
        raise ValueError(f"unsupported URL scheme {scheme!r}; supported: {supported} (and "
                         "postgresql://, which means psycopg if installed, else asyncpg)") from None


def backend_of_or_none(scheme: str) -> str | None:
    """The backend of a URL scheme, or None for an unsupported one."""
    found = SCHEMES.get(scheme)
    return found[0] if found else None
