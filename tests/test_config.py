"""The one schema: settings loading, presets, validation errors that name pool and field, masking."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connman import (
    PRESETS,
    ConfigurationError,
    ConnectionManager,
    PoolConfig,
    SecretURL,
    load_settings,
    mask_url,
)
from connman._url import secrets_of

PG = "postgresql+asyncpg://app:s3cret@127.0.0.1:5432/app"


def test_env_settings_build_named_pools(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONNMAN_POOLS__MAIN__URL", PG)
    monkeypatch.setenv("CONNMAN_POOLS__MAIN__SIZE", "10")
    monkeypatch.setenv("CONNMAN_POOLS__MAIN__OVERFLOW", "20")
    monkeypatch.setenv("CONNMAN_POOLS__DOCS__URL", "mongodb://127.0.0.1:27017/app")
    monkeypatch.setenv("CONNMAN_POOLS__DOCS__OPTIONS", '{"retryWrites": false}')
    m = ConnectionManager.from_settings()
    assert m.names == ("main", "docs")
    main = m.pool("main").config
    assert (main.size, main.overflow, main.max_size) == (10, 20, 30)
    assert m.pool("docs").config.options == {"retryWrites": False}
    assert "s3cret" not in repr(m)


def test_dotenv_and_config_file_with_env_winning(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pools.toml").write_text(
        f'[pools.main]\nurl = "{PG}"\nsize = 3\ntimeout = 4.5\n')
    (tmp_path / ".env").write_text("CONNMAN_POOLS__MAIN__SIZE=7\n")
    s = load_settings(config_file=tmp_path / "pools.toml")
    m = ConnectionManager.from_settings(s)
    cfg = m.pool("main").config
    assert (cfg.size, cfg.timeout) == (7, 4.5)
    (tmp_path / "pools.json").write_text(json.dumps({"pools": {"x": {"url": PG}}}))
    assert "x" in load_settings(env_file=None, config_file=tmp_path / "pools.json").pools


def test_presets_fill_unset_fields_and_explicit_fields_win() -> None:
    cfg = PoolConfig(url=PG, preset="high_traffic", timeout=1.0)  # type: ignore[arg-type]
    assert cfg.size == PRESETS["high_traffic"]["size"]
    assert cfg.timeout == 1.0
    assert PoolConfig(url=PG, preset="development").leak_threshold == 10.0  # type: ignore[arg-type]


@pytest.mark.parametrize(("fields", "field", "message"), [
    ({"size": -1}, "size", "at least 1 on a SQL pool"),  # the minimum that holds (issue 24)
    ({"timeout": 0}, "timeout", "greater than 0"),
    ({"sizee": 3}, "sizee", "Extra inputs"),
    ({"url": "oracle://x/y"}, "url", "unsupported URL scheme 'oracle'"),
    ({"url": "not a url"}, "url", "not a URL"),
    ({"options": {"pool_size": 3}}, "options", "conflicts with the field 'size'"),
    ({"driver": "motor"}, "driver", "applies to mongodb:// pools only"),
    ({"size": 0, "overflow": 0}, "size", "at least 1"),
])
def test_invalid_config_names_the_pool_and_field(fields: dict[str, Any], field: str,
                                                 message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ConnectionManager({"orders": {"url": PG, **fields}})
    err = info.value
    assert err.pool == "orders"
    assert err.field == field
    assert "pool 'orders'" in str(err)
    assert message in str(err)
    assert "s3cret" not in str(err)


def test_mongo_needs_a_database_and_options_conflicts_are_case_insensitive() -> None:
    with pytest.raises(ConfigurationError, match="no database"):
        ConnectionManager({"docs": {"url": "mongodb://h:27017/"}})
    with pytest.raises(ConfigurationError, match="conflicts with the field 'size'"):
        ConnectionManager({"docs": {"url": "mongodb://h/app", "options": {"MINPOOLSIZE": 1}}})


def test_sql_size_zero_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigurationError, match="SQLAlchemy reads pool_size=0"):
        ConnectionManager({"main": {"url": PG, "size": 0, "overflow": 5}})


async def test_bad_env_value_names_pool_field_and_variable_at_open(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONNMAN_POOLS__MAIN__URL", PG)
    monkeypatch.setenv("CONNMAN_POOLS__MAIN__SIZE", "ten")
    m = ConnectionManager.from_settings()  # importing the app does not raise (issue 24)
    with pytest.raises(ConfigurationError, match=r"pool 'main': size: .*integer") as info:
        await m.open()
    assert "(from the environment variable CONNMAN_POOLS__MAIN__SIZE)" in str(info.value)
    assert "\n" not in str(info.value)
    assert "s3cret" not in str(info.value)


async def test_a_required_field_set_nowhere_names_the_variable_to_set(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.upper().startswith("CONNMAN_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CONNMAN_POOLS__MAIN__SIZE", "5")  # a pool, but no url anywhere
    m = ConnectionManager.from_settings()
    with pytest.raises(ConfigurationError, match="pool 'main': url: Field required") as info:
        await m.open()
    assert str(info.value).endswith("(set CONNMAN_POOLS__MAIN__URL in the environment or .env)")
    assert info.value.pool == "main"
    assert info.value.field == "url"


def test_duplicate_names_are_an_error() -> None:
    with pytest.raises(ConfigurationError, match="defined twice"):
        ConnectionManager({"main": PG, "MAIN": PG})


async def test_no_pools_is_an_error_when_the_pools_open(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    manager = ConnectionManager.from_settings()  # at import: no error (tests/test_startup.py)
    with pytest.raises(ConfigurationError, match="no pools configured: set "
                                                 "CONNMAN_POOLS__<NAME>__URL"):
        await manager.open()
    with pytest.raises(ConfigurationError, match="no pools configured"):
        ConnectionManager({})
    with pytest.raises(ConfigurationError, match="no pools configured"):
        ConnectionManager.from_settings(load_settings(env_file=None))


URLS = [
    ("postgresql+asyncpg://app:s3cret@db:5432/app", ["s3cret"]),
    ("postgresql+asyncpg://app:p%40ss%2Fw0rd@db/app", ["p%40ss%2Fw0rd", "p@ss/w0rd"]),
    ("mysql+aiomysql://root@db/app?password=qu3ry-pw", ["qu3ry-pw"]),
    ("mongodb://u:m0ngo-pw@h1:27017,h2:27017/app?replicaSet=rs", ["m0ngo-pw"]),
    ("mongodb+srv://u:srv-pw@cluster.example.net/app?authSource=admin", ["srv-pw"]),
    ("mongodb://u@h/app?tlsCertificateKeyFilePassword=tls-pw&authMechanism=X", ["tls-pw"]),
]


@pytest.mark.parametrize(("url", "secrets"), URLS)
def test_passwords_never_appear_in_repr_str_or_errors(url: str, secrets: list[str]) -> None:
    masked = mask_url(url)
    assert set(secrets) <= set(secrets_of(url))
    cfg = PoolConfig(url=url)  # type: ignore[arg-type]
    shown = [masked, repr(cfg), str(cfg), str(cfg.url), repr(cfg.url), cfg.model_dump_json()]
    m = ConnectionManager({"p": cfg})
    shown.append(repr(m))
    shown.append(json.dumps(m.pool("p").driver_options(), default=str))
    with pytest.raises(ConfigurationError) as info:
        ConnectionManager({"p": {"url": url, "size": -3}})
    shown.append(str(info.value))
    for text in shown:
        for secret in secrets:
            assert secret not in text, (secret, text)
    assert isinstance(cfg.url, SecretURL)
    assert cfg.url.get_secret_value() == url


@pytest.mark.parametrize("page", ["mapping.md", "configuration.md"])
def test_generated_docs_match_the_code(page: str) -> None:
    import importlib.util

    root = Path(__file__).parent.parent
    spec = importlib.util.spec_from_file_location("connman_docs_script", root / "scripts" / "docs.py")
    assert spec is not None
    assert spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    GENERATED = script.GENERATED
    doc = root / "docs" / page
    assert doc.read_text() == GENERATED[page](), "run: python scripts/docs.py"


# ---------------------------------------------------------------- properties (hypothesis)
FIELDS: dict[str, Any] = {
    "size": st.one_of(st.integers(-5, 50), st.text(max_size=3), st.none()),
    "overflow": st.one_of(st.integers(-5, 50), st.floats(allow_nan=True)),
    "timeout": st.one_of(st.floats(-1, 100), st.just(float("nan")), st.text(max_size=4)),
    "recycle": st.one_of(st.none(), st.floats(-5, 10_000), st.booleans()),
    "idle": st.one_of(st.none(), st.floats(-5, 10_000)),
    "pre_ping": st.one_of(st.booleans(), st.text(max_size=5)),
    "max_waiting": st.integers(-3, 1000),
    "driver": st.sampled_from([None, "pymongo", "motor", "other"]),
    "preset": st.sampled_from([None, "development", "production", "high_traffic", "nope"]),
    "options": st.dictionaries(st.sampled_from(["pool_size", "appname", "connect_args",
                                                "maxPoolSize", "x"]), st.integers(0, 3),
                               max_size=2),
    "bogus": st.integers(),
}
URL_CHOICES = st.sampled_from([
    "postgresql+asyncpg://u:hyp-pw@h/db", "mysql+asyncmy://u:hyp-pw@h/db",
    "sqlite+aiosqlite:///tmp/x.db", "mongodb://u:hyp-pw@h/db", "mongodb://u:hyp-pw@h/",
    "redis://u:hyp-pw@h/0", "hyp-pw", "",
])


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(url=URL_CHOICES, fields=st.fixed_dictionaries({}, optional=FIELDS),
       name=st.sampled_from(["main", "Docs", "orders-2"]))
def test_any_config_is_valid_or_a_configuration_error_naming_pool_and_field(
        url: str, fields: dict[str, Any], name: str) -> None:
    try:
        m = ConnectionManager({name: {"url": url, **fields}})
    except ConfigurationError as exc:
        assert exc.pool is not None
        assert exc.pool.lower() == name.lower()
        assert exc.field
        assert f"pool {name.lower()!r}" in str(exc).lower()
        assert "hyp-pw" not in str(exc)
        return
    cfg = m.pool(name).config
    assert "hyp-pw" not in repr(m) + repr(cfg)
    assert cfg.max_size >= 1


ENV_VALUES = st.one_of(st.integers(-3, 40).map(str), st.sampled_from(
    ["", "x", "1.5", "true", "null", "{", "{}", '{"a": 1}', "[1]"]))


@settings(max_examples=600, deadline=None)
@given(env=st.dictionaries(st.sampled_from([
    "CONNMAN_POOLS__MAIN__SIZE", "CONNMAN_POOLS__MAIN__TIMEOUT", "CONNMAN_POOLS__MAIN__OPTIONS",
    "CONNMAN_POOLS__MAIN__PRE_PING", "CONNMAN_POOLS__MAIN__PRESET", "CONNMAN_WORKERS",
    "CONNMAN_POOLS__MAIN__IDLE", "CONNMAN_POOLS__MAIN__URL"]), ENV_VALUES, max_size=5))
def test_any_env_set_loads_or_raises_configuration_error(env: dict[str, str]) -> None:
    import os

    saved = {k: v for k, v in os.environ.items() if k.startswith("CONNMAN_")}
    for k in saved:
        del os.environ[k]
    os.environ["CONNMAN_POOLS__MAIN__URL"] = "postgresql+asyncpg://u:env-pw@h/db"
    os.environ.update(env)
    try:
        try:
            m = ConnectionManager.from_settings(env_file=None)
        except ConfigurationError as exc:
            assert exc.field
            assert "env-pw" not in str(exc)
            return
        assert "env-pw" not in repr(m)
    finally:
        for k in [k for k in os.environ if k.startswith("CONNMAN_")]:
            del os.environ[k]
        os.environ.update(saved)
