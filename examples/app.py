"""An example service: one SQL pool ("main") and one Mongo pool ("docs") under one lifespan.

Configure it through the environment, e.g.:
    CONNMAN_POOLS__MAIN__URL=postgresql+asyncpg://app:secret@127.0.0.1:5432/app
    CONNMAN_POOLS__DOCS__URL=mongodb://127.0.0.1:27017/app
and run `uvicorn examples.app:app`.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import Integer, String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from connman import ConnectionManager


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL + synchronous=NORMAL: readers beside the one writer, no fsync on every commit.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_app(manager: ConnectionManager | None = None) -> FastAPI:
    manager = manager or ConnectionManager.from_settings()
    if manager.pool("main").config.driver_name == "aiosqlite":
        manager.on_connect("main", sqlite_pragmas)
    app = FastAPI(lifespan=manager.lifespan)
    app.include_router(manager.health_router())  # public: status per pool
    # URLs, driver errors, stats: keep it off the public port (or behind an auth dependency).
    app.include_router(manager.health_router(prefix="/internal/health", detail=True))
    app.state.manager = manager

    @app.post("/users")
    async def create_user(name: str, db: AsyncSession = Depends(manager.session("main")),
                          docs: Any = Depends(manager.session("docs"))) -> dict[str, Any]:
        user = User(name=name)
        db.add(user)
        await db.flush()
        await docs.audit.insert_one({"event": "user_created", "user_id": user.id})
        return {"id": user.id, "name": user.name}

    @app.get("/users/{user_id}")
    async def get_user(user_id: int,
                       db: AsyncSession = Depends(manager.session("main"))) -> dict[str, Any]:
        user = (await db.execute(select(User).where(User.id == user_id))).scalar_one_or_none()
        if user is None:
            raise HTTPException(404, f"no user {user_id}")
        return {"id": user.id, "name": user.name}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return dict(manager.stats())

    return app


async def create_schema(manager: ConnectionManager) -> None:
    """Create the example's tables (an app would use migrations)."""
    async with manager.native("main").begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
