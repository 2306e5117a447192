"""SQLModel on connman: the heroes app of SQLModel's FastAPI tutorial, with connman's pools.

- Sessions are SQLModel's `AsyncSession` (with `.exec()`): `session_class` in the pool config.
- The database URL lives in the app's own settings object, and only there; connman reads it when
  the app starts (the lifespan), so this module imports without any database settings (tests,
  Alembic's env.py, CLIs).

Run it with `HEROES_DATABASE_URL=postgresql+asyncpg://app:secret@127.0.0.1:5432/app uvicorn
examples.sqlmodel_app:app` (or `sqlite+aiosqlite:///heroes.db`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import cache
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from connman import ConnectionManager


class Settings(BaseSettings):
    """The app's settings: `HEROES_DATABASE_URL`, `HEROES_POOL_SIZE` or a `.env`."""

    model_config = SettingsConfigDict(env_prefix="HEROES_", env_file=".env", extra="ignore")
    database_url: str
    pool_size: int = 5


@cache
def get_settings() -> Settings:
    return Settings()  # type: ignore[call-arg]  # pydantic-settings reads the environment


class HeroBase(SQLModel):
    name: str = Field(max_length=100, index=True)
    secret_name: str = Field(max_length=100)
    age: int | None = Field(default=None, index=True)


class Hero(HeroBase, table=True):
    id: int | None = Field(default=None, primary_key=True)


class HeroCreate(HeroBase):
    pass


class HeroPublic(HeroBase):
    id: int


def create_app(settings: Callable[[], Settings] = get_settings) -> FastAPI:
    def pools() -> dict[str, Any]:  # called by the lifespan, not at import
        s = settings()
        return {"main": {"url": s.database_url, "size": s.pool_size,
                         "session_class": AsyncSession}}

    manager = ConnectionManager(pools)
    db_session = manager.session("main")

    @asynccontextmanager
    async def create_tables(app: FastAPI) -> AsyncIterator[None]:
        # An app would run migrations; the example creates its table through a connman session.
        async with manager.session("main") as db:
            await db.run_sync(lambda s: SQLModel.metadata.create_all(s.connection()))
        yield

    app = FastAPI(lifespan=manager.wrap_lifespan(create_tables))
    app.state.manager = manager
    app.include_router(manager.health_router())

    @app.post("/heroes/", response_model=HeroPublic)
    async def create_hero(hero: HeroCreate, db: AsyncSession = Depends(db_session)) -> Hero:
        db_hero = Hero.model_validate(hero)
        db.add(db_hero)
        await db.flush()  # assigns the id; connman commits before the response is sent
        return db_hero

    @app.get("/heroes/", response_model=list[HeroPublic])
    async def read_heroes(offset: int = 0, limit: int = Query(default=100, le=100),
                          db: AsyncSession = Depends(db_session)) -> list[Hero]:
        result = await db.exec(select(Hero).order_by(col(Hero.id)).offset(offset).limit(limit))
        return list(result.all())

    @app.get("/heroes/{hero_id}", response_model=HeroPublic)
    async def read_hero(hero_id: int, db: AsyncSession = Depends(db_session)) -> Hero:
        hero = await db.get(Hero, hero_id)
        if hero is None:
            raise HTTPException(status_code=404, detail="Hero not found")
        return hero

    @app.delete("/heroes/{hero_id}")
    async def delete_hero(hero_id: int, db: AsyncSession = Depends(db_session)) -> dict[str, bool]:
        hero = await db.get(Hero, hero_id)
        if hero is None:
            raise HTTPException(status_code=404, detail="Hero not found")
        await db.delete(hero)
        return {"ok": True}

    return app


app = create_app()
