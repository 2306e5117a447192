"""The settings loader: environment, `.env` and a TOML/JSON file into validated pools, with
errors that name the pool, the field and where it was set, never a value."""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_serializer
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ._poolconfig import FieldError, PoolConfig, _looks_secret, _masked_options
from ._url import mask_url, url_string
from .errors import ConfigurationError

_config_file: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "connman_config_file", default=None)

def _masked_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A raw pool dict with its URLs masked and secret-looking options hidden."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key == "url":
            out[key] = _masked_url(value)
        elif key == "replicas" and isinstance(value, list):
            out[key] = [_masked_url(v) for v in value]
        elif key == "options" and isinstance(value, Mapping):
            out[key] = _masked_options(value)
        elif _looks_secret(key):
            out[key] = "***"
        else:
            out[key] = value
    return out


def _masked_url(value: Any) -> str:
    """Any URL value (string, SQLAlchemy URL, pydantic DSN), masked; *** when it is no URL."""
    try:
        return mask_url(url_string(value))
    except ValueError:
        return "***"


def _field_of(err: Any) -> str:
    parts = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
    cause = (err.get("ctx") or {}).get("error")
    if not parts and isinstance(cause, FieldError):
        return cause.field
    return ".".join(parts) if parts else "(pool)"


def _describe(err: Any) -> str:
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return msg


def config_error(pool: str, exc: ValidationError) -> ConfigurationError:
    """Turn pydantic's error into one that names the pool and the field, and never the URL."""
    errors = exc.errors(include_url=False, include_input=False)
    field = _field_of(errors[0])
    details = "; ".join(f"{_field_of(e)}: {_describe(e)}" for e in errors)
    return ConfigurationError(f"pool {pool!r}: {details}", pool=pool, field=field)


def validate_pools(pools: Mapping[str, Any]) -> dict[str, PoolConfig]:
    """Validate a mapping of pool name -> PoolConfig or dict; errors name the pool and field."""
    out: dict[str, PoolConfig] = {}
    for name, raw in pools.items():
        if not isinstance(name, str) or not name or not name.replace("_", "").replace(
            "-", ""
        ).isalnum():
            raise ConfigurationError(
                f"pool name {name!r} is invalid: use letters, digits, '-' and '_'",
                pool=str(name), field="name",
            )
        key = name.lower()
        if key in out:
            raise ConfigurationError(f"pool {name!r} is defined twice (names are case-insensitive)",
                                     pool=name, field="name")
        if isinstance(raw, PoolConfig):
            out[key] = raw
            continue
        if isinstance(raw, str):
            raw = {"url": raw}
        if not isinstance(raw, Mapping):
            raise ConfigurationError(f"pool {name!r}: expected a mapping of fields or a URL",
                                     pool=name, field="(pool)")
        try:
            out[key] = PoolConfig.model_validate(dict(raw))
        except ValidationError as exc:
            raise config_error(name, exc) from None
    if not out:
        raise ConfigurationError("no pools configured: set CONNMAN_POOLS__<NAME>__URL",
                                 field="pools")
    return out


class ConnmanSettings(BaseSettings):
    """Settings read from the environment (`CONNMAN_POOLS__MAIN__URL=...`), `.env` or a file."""

    model_config = SettingsConfigDict(
        env_prefix="CONNMAN_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    pools: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Pools by name; each is validated as a `PoolConfig`."""
    workers: int = Field(1, ge=1)
    """Worker processes per replica that each open these pools (for the connection budget)."""
    replicas: int = Field(1, ge=1)
    """Replicas of the service (for the connection budget)."""

    @field_serializer("pools")
    def _mask_pools(self, pools: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {name: _masked_fields(fields) for name, fields in pools.items()}

    def __repr_args__(self) -> Any:
        for key, value in super().__repr_args__():
            yield key, (self._mask_pools(value) if key == "pools" else value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment over .env over the config file (TOML or JSON, by its suffix)."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        path = _config_file.get() or os.environ.get("CONNMAN_CONFIG_FILE")
        if path:
            if path.endswith(".json"):
                sources.append(JsonConfigSettingsSource(settings_cls, json_file=path))
            else:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def load_settings(*, env_file: str | Path | None = ".env",
                  config_file: str | Path | None = None) -> ConnmanSettings:
    """Read `ConnmanSettings` from the environment, `.env` and an optional TOML/JSON file.

    Errors are `ConfigurationError`s that name the pool and the field, never a URL.
    """
    token = _config_file.set(str(config_file) if config_file is not None else None)
    try:
        settings = ConnmanSettings(_env_file=env_file)  # type: ignore[call-arg]
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        loc = [str(p) for p in err["loc"]]
        pool = loc[1] if len(loc) > 1 and loc[0] == "pools" else None
        field = ".".join(loc[2:] if pool else loc) or "(settings)"
        prefix = f"pool {pool!r}: " if pool else ""
        error = ConfigurationError(f"{prefix}{field}: {err['msg']}", pool=pool, field=field)
        raise with_source(error, env_file=env_file, config_file=config_file) from None
    except Exception as exc:  # pydantic-settings' SettingsError: bad JSON in a variable, ...
        raise ConfigurationError(f"settings could not be read: {type(exc).__name__}",
                                 field="(settings)") from None
    finally:
        _config_file.reset(token)
    for cfg in settings.pools.values():
        for key in ("options", "session_options"):
            opts = cfg.get(key)
            if isinstance(opts, str):  # CONNMAN_POOLS__MAIN__OPTIONS='{"k": 1}'
                import json

                with contextlib.suppress(ValueError):
                    cfg[key] = json.loads(opts)
    return settings


def settings_pools(settings: ConnmanSettings, *, env_file: str | Path | None = ".env",
                   config_file: str | Path | None = None) -> dict[str, PoolConfig]:
    """The validated pools of `settings` read by `load_settings` with these files.

    Raises `ConfigurationError` naming the pool, the field and where the value came from (the
    environment variable, the `.env` file or the config file), never the value.
    """
    try:
        return validate_pools(settings.pools)
    except ConfigurationError as exc:
        raise with_source(exc, env_file=env_file, config_file=config_file) from None


def with_source(error: ConfigurationError, *, env_file: str | Path | None = ".env",
                config_file: str | Path | None = None) -> ConfigurationError:
    """`error` with where its field was set appended: `(from the environment variable
    CONNMAN_POOLS__MAIN__SIZE)`, `(from CONNMAN_POOLS__MAIN__SIZE in .env)`, `(from
    settings.toml)`; `error` itself when that is not known."""
    source = _source_of(error.pool, error.field, env_file=env_file, config_file=config_file)
    if source is None:
        top = (error.field or "").split(".")[0]
        if error.pool is None or not top or top.startswith("("):
            return error
        # Set nowhere: a required field nobody gave. Say what to set.
        where = "the environment" + (f" or {env_file}" if env_file is not None else "")
        hint = f"set CONNMAN_POOLS__{error.pool.upper()}__{top.upper()} in {where}"
        if config_file is not None:
            hint += f", or pools.{error.pool}.{top} in {config_file}"
        return ConfigurationError(f"{error} ({hint})", pool=error.pool, field=error.field)
    return ConfigurationError(f"{error} ({source})", pool=error.pool, field=error.field)


def _source_of(pool: str | None, field: str | None, *, env_file: str | Path | None,
               config_file: str | Path | None) -> str | None:
    top = (field or "").split(".")[0].upper()
    if pool is not None:
        names = [f"CONNMAN_POOLS__{pool.upper()}__{top}", f"CONNMAN_POOLS__{pool.upper()}",
                 "CONNMAN_POOLS"]
    elif top and not top.startswith("("):
        names = [f"CONNMAN_{top}"]
    else:
        return None
    environ = {k.upper() for k in os.environ}
    for name in names:
        if name in environ:
            return f"from the environment variable {name}"
    if env_file is not None and Path(env_file).is_file():
        from dotenv import dotenv_values

        in_file = {k.upper() for k in dotenv_values(env_file)}
        for name in names:
            if name in in_file:
                return f"from {name} in {env_file}"
    path = config_file or os.environ.get("CONNMAN_CONFIG_FILE")
    return f"from {path}" if path else None
