"""A new app whose manager reads its pools from settings (CONNMAN_POOLS__*), tested with
connman's plugin on a machine where none are set (docs/testing.md)."""

from typing import Any

from fastapi import Depends, FastAPI
from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from connman import ConnectionManager


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    title: Mapped[str] = mapped_column(String(40), primary_key=True)


manager = ConnectionManager.from_settings()   # CONNMAN_POOLS__MAIN__URL etc. in production
app = FastAPI(lifespan=manager.lifespan)


@app.post("/notes", status_code=201)
async def add(title: str, db: AsyncSession = Depends(manager.session("main")),
              docs: Any = Depends(manager.session("docs"))) -> None:
    db.add(Note(title=title))
    await docs.events.insert_one({"title": title})


@app.get("/notes")
async def notes(db: AsyncSession = Depends(manager.session("main", readonly=True))) -> list[str]:
    return list((await db.execute(select(Note.title).order_by(Note.title))).scalars())


@app.get("/events")
async def events(docs: Any = Depends(manager.session("docs"))) -> list[str]:
    return [e["title"] async for e in docs.events.find({})]
