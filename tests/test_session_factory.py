"""The session a SQL pool hands out: `session_class`, `session_options` and the `commit` policy.

Tested for real on every SQL backend, with SQLModel's `AsyncSession` (`.exec()`) as the class
apps reach for first. The `commit="manual"` tests need `SQLAlchemyPool._end` to honour the policy.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelSession

from connman import ConfigurationError, ConnectionManager

from .conftest import only

Make = Callable[..., ConnectionManager]
SQLITE = "sqlite+aiosqlite:///unused.db"
SQL = only(kinds=("sql",))


class Hero(SQLModel, table=True):
    __tablename__ = "connman_heroes"
    id: int | None = Field(default=None, primary_key=True)
    tag: str = Field(max_length=16, index=True)
    name: str = Field(max_length=64)


class AuditedSession(AsyncSession):
    """An app's own session class."""


async def create_heroes(m: ConnectionManager) -> str:
    async with m.session("main") as db:  # through the gate, like every other connection
        await db.run_sync(lambda s: SQLModel.metadata.create_all(s.connection(),
                                                                  tables=[Hero.__table__]))
        await db.commit()  # also under commit="manual"
    return uuid.uuid4().hex[:8]  # each test's rows carry their own tag


async def names(m: ConnectionManager, tag: str) -> list[str]:
    stmt = select(Hero.name).where(Hero.tag == tag).order_by(col(Hero.name))
    async with m.session("main") as db:
        if isinstance(db, SQLModelSession):  # whose execute() warns: exec() is its API
            return list((await db.exec(stmt)).all())
        return list((await db.execute(stmt)).scalars().all())


def assert_returned(m: ConnectionManager) -> None:
    stats = m.stats("main")
    assert stats["requests_active"] == 0
    assert stats["pool_available"] == stats["pool_size"]


# -- session_class and session_options ------------------------------------------------------------


@SQL
@pytest.mark.parametrize("session_class", [
    "sqlmodel.ext.asyncio.session.AsyncSession", "sqlmodel.ext.asyncio.session:AsyncSession",
    SQLModelSession])
async def test_sqlmodel_session_class(make_manager: Make,
                                      session_class: Any) -> None:
    m = make_manager(session_class=session_class)
    assert m.pool("main").config.session_class is SQLModelSession
    async with m:
        tag = await create_heroes(m)
        async with m.session("main") as db:
            assert type(db) is SQLModelSession
            db.add(Hero(tag=tag, name="Deadpond"))
            db.add(Hero(tag=tag, name="Rusty-Man"))
        async with m.session("main") as db:
            heroes = (await db.exec(select(Hero).where(Hero.tag == tag)
                                    .order_by(col(Hero.name)))).all()
            assert [h.name for h in heroes] == ["Deadpond", "Rusty-Man"]
            # connman's default survives a custom class: objects stay readable after commit.
            assert db.sync_session.expire_on_commit is False
        assert_returned(m)


@SQL
async def test_session_options_reach_every_session(make_manager: Make) -> None:
    m = make_manager(session_class=AuditedSession,
                     session_options={"autoflush": False, "expire_on_commit": True,
                                      "info": {"tenant": "t1"}})
    async with m:
        tag = await create_heroes(m)
        async with m.session("main") as db:
            assert type(db) is AuditedSession
            assert db.info == {"tenant": "t1"}
            assert db.sync_session.expire_on_commit is True
            db.add(Hero(tag=tag, name="Tarantula"))
            # autoflush=False: the pending row is not flushed by this query, so it sees nothing.
            assert (await db.execute(text("SELECT count(*) FROM connman_heroes WHERE tag = :t"),
                                     {"t": tag})).scalar() == 0
        assert await names(m, tag) == ["Tarantula"]
        async with m.session("main") as db:
            hero = (await db.execute(select(Hero).where(Hero.tag == tag))).scalar_one()
            await db.commit()
            # expire_on_commit=True: the attribute was expired and must be loaded again.
            assert "name" not in hero.__dict__
        assert_returned(m)


@pytest.mark.parametrize(("fields", "field", "message"), [
    ({"session_class": "sqlmodel.ext.asyncio.session.NoSuchSession"}, "session_class",
     "module 'sqlmodel.ext.asyncio.session' has no 'NoSuchSession'"),
    ({"session_class": "no_such_package.Session"}, "session_class",
     "cannot import 'no_such_package.Session'"),
    ({"session_class": "AsyncSession"}, "session_class", "is not a dotted path"),
    ({"session_class": 42}, "session_class", "expected a class or a dotted path, not int"),
    ({"session_class": "sqlalchemy.orm.Session"}, "session_class",
     "sqlalchemy.orm.session.Session is not a subclass of sqlalchemy.ext.asyncio.AsyncSession"),
    ({"session_options": {"bind": None}}, "session_options",
     "'bind' cannot be set: sessions are bound to this pool's engine"),
    ({"session_options": {"binds": {}}}, "session_options", "'binds' cannot be set"),
    ({"session_options": {"class_": AsyncSession}}, "session_options",
     "'class_' cannot be set: set 'session_class' instead"),
    ({"session_options": {"autoflsh": False}}, "session_options",
     "unexpected keyword argument 'autoflsh'"),
    ({"session_options": {"join_transaction_mode": "sometimes"}}, "session_options",
     "join_transaction_mode"),
    ({"session_options": []}, "session_options", "Input should be a valid dictionary"),
    ({"commit": "later"}, "commit", "Input should be 'auto' or 'manual'"),
])
def test_invalid_session_settings_name_the_pool_and_field(fields: dict[str, Any], field: str,
                                                         message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ConnectionManager({"main": {"url": SQLITE, **fields}})
    assert info.value.field == field
    assert info.value.pool == "main"
    assert str(info.value).startswith(f"pool 'main': {field}: ")
    assert message in str(info.value)


@pytest.mark.parametrize(("fields", "field"), [
    ({"session_class": SQLModelSession}, "session_class"),
    ({"session_options": {"autoflush": False}}, "session_options"),
    ({"commit": "manual"}, "commit"),
])
def test_sql_session_settings_are_refused_on_mongo(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ConnectionManager({"docs": {"url": "mongodb://127.0.0.1:27017/app", **fields}})
    assert (info.value.pool, info.value.field) == ("docs", field)


def test_session_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Any) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONNMAN_POOLS__MAIN__URL", f"sqlite+aiosqlite:///{tmp_path}/env.db")
    monkeypatch.setenv("CONNMAN_POOLS__MAIN__SESSION_CLASS",
                       "sqlmodel.ext.asyncio.session.AsyncSession")
    monkeypatch.setenv("CONNMAN_POOLS__MAIN__SESSION_OPTIONS", '{"autoflush": false}')
    monkeypatch.setenv("CONNMAN_POOLS__MAIN__COMMIT", "manual")
    config = ConnectionManager.from_settings().pool("main").config
    assert config.session_class is SQLModelSession
    assert config.session_options == {"autoflush": False}
    assert config.commit == "manual"
    assert config.model_dump()["session_class"] == "sqlmodel.ext.asyncio.session.AsyncSession"


# -- commit="auto" (the default) and commit="manual" ----------------------------------------------


@SQL
async def test_auto_commits_what_the_unit_wrote(make_manager: Make) -> None:
    m = make_manager()
    async with m:
        tag = await create_heroes(m)
        async with m.session("main") as db:
            db.add(Hero(tag=tag, name="auto"))
        assert await names(m, tag) == ["auto"]
        assert_returned(m)


@SQL
async def test_manual_keeps_only_what_the_app_committed(make_manager: Make) -> None:
    """Needs the `commit="manual"` branch of `SQLAlchemyPool._end`."""
    m = make_manager(commit="manual", session_class=SQLModelSession)
    async with m:
        tag = await create_heroes(m)
        async with m.session("main") as db:
            db.add(Hero(tag=tag, name="committed"))
            await db.commit()
            db.add(Hero(tag=tag, name="left-uncommitted"))
            await db.flush()  # sent to the server, inside a transaction nobody commits
        assert await names(m, tag) == ["committed"]
        async with m.session("main") as db:
            db.add(Hero(tag=tag, name="never-committed"))
        assert await names(m, tag) == ["committed"]
        assert_returned(m)


@SQL
async def test_manual_rolls_back_on_error_and_returns_the_connection(
        make_manager: Make) -> None:
    m = make_manager(commit="manual", size=1, overflow=0)
    async with m:
        tag = await create_heroes(m)
        with pytest.raises(RuntimeError, match="boom"):
            async with m.session("main") as db:
                db.add(Hero(tag=tag, name="before"))
                await db.commit()
                db.add(Hero(tag=tag, name="after"))
                await db.flush()
                raise RuntimeError("boom")
        # One connection, and the next unit gets it: the failed one gave it back.
        assert await names(m, tag) == ["before"]
        assert_returned(m)
        assert m.stats("main")["requests_num"] == 3
