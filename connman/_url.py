"""URL parsing and masking: the one place that sees a password in clear."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
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


# SQLAlchemy's reading of `user:password@`: the password runs to the first '@' whatever it holds.
_SA_USERINFO = re.compile(r"(?P<user>[^:/]*):(?P<password>[^@]*)@")


def check_authority(url: str) -> None:
    """Raise ValueError when the driver would read another host, port or password than the URL
    shows: an unencoded `@`, `/`, `?` or `#` in the user name or password, or a port that is not a
    number from 1 to 65535. The message never quotes the password.

    SQLAlchemy ends the password at the first `@` (`app:p@ss@db` connects to host `ss@db`), while
    URL parsers end the host at `/`, `?` or `#`; percent-encoding the password (`%40`, `%2F`,
    `%3F`, `%23`) is read the same way by every driver.
    """
    scheme, rest = split_scheme(url)
    if rest.startswith("/"):
        return  # no authority: a SQLite path, or a socket in the query
    encode = ("percent-encode it: urllib.parse.quote(password, safe='') ('@' is %40, '#' %23; "
              "an '@' in the query is %40 too)")
    m = _SA_USERINFO.match(rest)
    if m is not None and scheme.startswith("mongodb"):
        # PyMongo ends the hosts at the first '/': `host/db?appname=a@b` holds no password.
        path, slash, tail = m["password"].partition("/")
        if slash and "?" in tail and "@" not in path:
            m = None
    if m is not None:
        bad = sorted({c for c in m["password"] if c in "/?#"})
        if bad or any(c in m["user"] for c in "?#"):
            chars = ", ".join(repr(c) for c in bad) or "'?' or '#'"
            raise ValueError(f"the user name or password contains {chars} unencoded, so the "
                             f"driver would read another host or password than this URL shows: "
                             f"{encode}")
    first_at = rest.find("@")
    if first_at >= 0:
        after = re.split(r"[/?]", rest[first_at + 1:], maxsplit=1)[0]
        if "@" in after:
            raise ValueError("the user name or password contains '@' unencoded, so the driver "
                             f"would connect to another host than this URL shows: {encode}")
    userinfo, hosts, _, _ = _split_rest(rest)
    for host in hosts.split(","):
        if host.startswith("["):
            port = host.partition("]")[2].removeprefix(":")
        elif host.count(":") == 1:
            port = host.partition(":")[2]
        else:
            continue  # no port, or an unbracketed IPv6 address the driver checks itself
        if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            if not userinfo and not port.isdigit():  # `user:password` with no `@host`?
                raise ValueError("the port after the host is not a number from 1 to 65535 (if "
                                 "this is user:password, the '@host' after it is missing)")
            shown = repr(port) if len(port) <= 20 else "the text"
            raise ValueError(f"the port {shown} after the host is not a number from 1 to 65535")


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
    """The URL with its password and secret query parameters replaced by ***.

    Structural: only the password's place and the values of secret-looking query keys change, so
    `postgres:postgres@host/postgres` prints as `postgres:***@host/postgres`.
    """
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
        if any(_SECRET_KEYS.search(k) and v for k, v in pairs):
            masked = [(k, MASK if _SECRET_KEYS.search(k) and v else v) for k, v in pairs]
            out += "?" + urlencode(masked, safe="/:,*")
        else:
            out += "?" + query
    return out


def masked_password(url: str) -> bool:
    """Whether the URL's password (or a secret query value) is the mask `***` itself.

    That is what `str()` of a SQLAlchemy `URL` (and connman's own masked URLs) print: such a
    string is not a usable URL, and the driver would send `***` as the password.
    """
    try:
        _, rest = split_scheme(url)
    except ValueError:
        return False
    userinfo, _, _, query = _split_rest(rest)
    if ":" in userinfo and unquote(userinfo.split(":", 1)[1]) == MASK:
        return True
    return any(_SECRET_KEYS.search(k) and v == MASK
               for k, v in parse_qsl(query, keep_blank_values=True))


# A URL inside free text (a driver's message): scheme:// up to whitespace, a quote or a bracket.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
_TRAILING = ".,;:)]}"


def _mask_in_text(url: str) -> str:
    """A URL found in free text, masked; one with nothing secret in it is left as written."""
    try:
        _, rest = split_scheme(url)
    except ValueError:
        return url
    userinfo = _split_rest(rest)[0]
    if ":" not in userinfo and not secrets_of(url):
        return url
    return mask_url(url)


def _cut(parts: list[tuple[bool, str]], find: Callable[[str], list[tuple[int, int, str]]]
         ) -> list[tuple[bool, str]]:
    """Split the unmasked parts at the spans `find` returns, each replaced by its masked text."""
    out: list[tuple[bool, str]] = []
    for done, part in parts:
        if done:
            out.append((done, part))
            continue
        pos = 0
        for start, end, masked in find(part):
            if start > pos:
                out.append((False, part[pos:start]))
            out.append((True, masked))
            pos = end
        if pos < len(part):
            out.append((False, part[pos:]))
    return out


def _known(url: str) -> Callable[[str], list[tuple[int, int, str]]]:
    masked = mask_url(url)

    def find(part: str) -> list[tuple[int, int, str]]:
        spans, i = [], part.find(url)
        while i >= 0:
            spans.append((i, i + len(url), masked))
            i = part.find(url, i + len(url))
        return spans

    return find


def _any_url(part: str) -> list[tuple[int, int, str]]:
    spans = []
    for m in _URL_IN_TEXT.finditer(part):
        url = m.group().rstrip(_TRAILING)
        spans.append((m.start(), m.start() + len(url), _mask_in_text(url)))
    return spans


def _token(secret: str) -> re.Pattern[str]:
    # A secret is hidden wherever it stands as a token of its own, not inside a longer word: a
    # password such as `postgres` or `test` must not turn `postgresql` or `testdb` into `***ql`.
    before = r"(?<!\w)" if secret[0].isalnum() or secret[0] == "_" else ""
    after = r"(?!\w)" if secret[-1].isalnum() or secret[-1] == "_" else ""
    return re.compile(before + re.escape(secret) + after)


def redact(text: str, secrets: Sequence[str], urls: Sequence[str] = ()) -> str:
    """`text` (a driver's message, say) with its URLs masked and the given secrets hidden.

    First every URL is masked structurally (the given `urls` wherever they occur, whatever their
    passwords contain, then anything else shaped like a URL), so its scheme, user, host and
    database stay readable. Then each secret is replaced by *** outside those URLs, wherever it
    stands as a token of its own.
    """
    parts: list[tuple[bool, str]] = [(False, text)]
    for url in sorted(urls, key=len, reverse=True):
        if url:
            parts = _cut(parts, _known(url))
    parts = _cut(parts, _any_url)
    patterns = [_token(s) for s in sorted(secrets, key=len, reverse=True) if s]
    out = []
    for done, part in parts:
        if not done:
            for pattern in patterns:
                part = pattern.sub(MASK, part)
        out.append(part)
    return "".join(out)


def url_path_database(url: str) -> str | None:
    """The database named in a URL's path (`/app` → `app`), or None."""
    try:
        _, rest = split_scheme(url)
    except ValueError:
        return None
    _, _, path, _ = _split_rest(rest)
    name = unquote(path.lstrip("/"))
    return name or None


def url_string(value: Any) -> str:
    """The URL in clear from a string, a `sqlalchemy.engine.URL`, a pydantic URL/DSN type
    (`PostgresDsn`, `MongoDsn`, `AnyUrl`, ...) or a pydantic `SecretStr`; ValueError otherwise."""
    if isinstance(value, str):
        return value
    render = getattr(value, "render_as_string", None)
    if callable(render):  # sqlalchemy.engine.URL; its str() hides the password
        return str(render(hide_password=False))
    module = type(value).__module__.split(".")[0]
    if module in ("pydantic", "pydantic_core"):
        if callable(getattr(value, "unicode_string", None)):  # Url, MultiHostUrl, *Dsn
            return str(value)
        secret = getattr(value, "get_secret_value", None)
        if callable(secret) and isinstance(secret(), str):  # SecretStr
            return str(secret())
    raise ValueError("must be a URL: a string, a sqlalchemy.engine.URL or a pydantic URL type, "
                     f"not {type(value).__name__}")


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
            text = url_string(value).strip()
            check_authority(text)
            if masked_password(text):
                raise ValueError(
                    f"the password is {MASK!r}, a mask, not a password: str() of a SQLAlchemy URL "
                    "prints it that way; pass the URL object itself or "
                    "url.render_as_string(hide_password=False)")
            return SecretURL(text)

        return core_schema.no_info_plain_validator_function(
            validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda v: v.masked, when_used="always"
            ),
        )


def with_scheme(url: str, scheme: str) -> str:
    """The URL with its scheme replaced (the rest kept byte for byte)."""
    _, rest = split_scheme(url)
    return f"{scheme}://{rest}"


def split_libpq_hosts(url: str, default_port: int) -> str | None:
    """libpq's multi-host form (`user@h1:5432,h2:5433/db`, what HA tooling emits) rewritten to
    the `?host=h1:5432&host=h2:5433` form SQLAlchemy's PostgreSQL dialects take (a host without a
    port gets `default_port`); None when the URL names one host. ValueError when it also names
    hosts in its query string, or one of its hosts is empty."""
    _, rest = split_scheme(url)
    userinfo, authority, path, query = _split_rest(rest)
    if "," not in authority:
        return None
    if any(key == "host" for key, _ in parse_qsl(query, keep_blank_values=True)):
        raise ValueError("several hosts both in the address and in `host=` query parameters; "
                         "use one form")
    hosts = []
    for part in authority.split(","):
        host, port = part, ""
        if part.startswith("["):  # [IPv6]:port
            end = part.find("]")
            host, port = part[:end + 1], part[end + 2:] if part[end + 1:end + 2] == ":" else ""
        elif ":" in part:
            host, port = part.rsplit(":", 1)
        if not host:
            raise ValueError(f"several hosts in the address, one of them empty: {authority!r}")
        hosts.append(f"{host}:{port or default_port}")
    params = "&".join(f"host={h}" for h in hosts)
    query = f"{query}&{params}" if query else params
    scheme, _ = split_scheme(url)
    return f"{scheme}://{userinfo + '@' if userinfo else ''}{path or '/'}?{query}"
