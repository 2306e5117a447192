"""URL parsing and masking: the one place that sees a password in clear."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<rest>.*)$", re.S)
_SECRET_KEYS = re.compile(r"pass|secret|token|key|credential", re.I)
MASK = "***"


def split_scheme(url: str) -> tuple[str, str]:
    """Return (scheme, rest) of a URL, or raise ValueError when it has no scheme."""
    m = _SCHEME.match(url)
    if not m:
        raise ValueError("not a URL: expected scheme://...")
    return m["scheme"].lower(), m["rest"]


def _split_rest(rest: str) -> tuple[str, str, str, str]:
    """Split 'userinfo@hosts/path?query' into its four parts (userinfo may be empty)."""
    query = ""
    if "?" in rest:
        rest, query = rest.split("?", 1)
    slash = rest.find("/")
    authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    userinfo = ""
    if "@" in authority:
        userinfo, authority = authority.rsplit("@", 1)
    return userinfo, authority, path, query


def secrets_of(url: str) -> list[str]:
    """Every secret a URL holds, raw and percent-decoded, longest first (for redaction)."""
    try:
        _, rest = split_scheme(url)
    except ValueError:
        return []
    userinfo, _, _, query = _split_rest(rest)
    found: set[str] = set()
    if ":" in userinfo:
        pw = userinfo.split(":", 1)[1]
        found.update({pw, unquote(pw)})
    for key, value in parse_qsl(query, keep_blank_values=True):
        if _SECRET_KEYS.search(key) and value:
            found.add(value)
    for raw in re.findall(r"(?i)[^&=]*(?:pass|secret|token|key|credential)[^&=]*=([^&]*)", query):
        if raw:
            found.update({raw, unquote(raw)})
    return sorted((s for s in found if s), key=len, reverse=True)


def mask_url(url: str) -> str:
    """The URL with its password and secret query parameters replaced by ***."""
    try:
        scheme, rest = split_scheme(url)
    except ValueError:
        return MASK
    userinfo, authority, path, query = _split_rest(rest)
    out = f"{scheme}://"
    if userinfo:
        user = userinfo.split(":", 1)[0]
        out += f"{user}:{MASK}@" if ":" in userinfo else f"{user}@"
    out += authority + path
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        masked = [(k, MASK if _SECRET_KEYS.search(k) and v else v) for k, v in pairs]
        out += "?" + urlencode(masked, safe="/:,*")
    return out


def redact(text: str, secrets: list[str]) -> str:
    """Replace every occurrence of the given secrets in a text by ***."""
    for secret in secrets:
        if len(secret) >= 1:
            text = text.replace(secret, MASK)
    return text


def url_path_database(url: str) -> str | None:
    """The database named in a URL's path (`/app` → `app`), or None."""
    try:
        _, rest = split_scheme(url)
    except ValueError:
        return None
    _, _, path, _ = _split_rest(rest)
    name = unquote(path.lstrip("/"))
    return name or None


class SecretURL:
    """A database URL whose `str`/`repr` are masked; `get_secret_value()` gives it in clear."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        """The URL in clear, for the driver only."""
        return self._value

    @property
    def masked(self) -> str:
        """The URL with its secrets replaced by ***."""
        return mask_url(self._value)

    @property
    def scheme(self) -> str:
        """The URL's scheme, lower-cased (`postgresql+asyncpg`, `mongodb`, ...)."""
        return split_scheme(self._value)[0]

    def secrets(self) -> list[str]:
        """The secrets this URL holds, for redacting text that may quote them."""
        return secrets_of(self._value)

    def __str__(self) -> str:
        return self.masked

    def __repr__(self) -> str:
        return f"SecretURL({self.masked!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretURL) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        def validate(value: Any) -> SecretURL:
            if isinstance(value, SecretURL):
                return value
            if not isinstance(value, str):
                raise ValueError("must be a URL string")
            value = value.strip()
            split_scheme(value)
            return SecretURL(value)

        return core_schema.no_info_plain_validator_function(
            validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda v: v.masked, when_used="always"
            ),
        )
