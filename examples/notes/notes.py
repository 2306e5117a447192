"""A small notes service: one SQL pool ("main") and one Mongo pool ("audit") under one lifespan.

Its manager is built at import from the environment, as most apps do; its tests
(test_notes.py) point the pools at throwaway servers and roll every test back
with connman's pytest plugin, without touching the environment.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import ForeignKey, Integer, String, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from connman import ConnectionManager, PoolConfig
from connman.fastapi import add_exception_handlers


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(100), unique=True)


class Tag(Base):
    __tablename__ = "tags"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    note_id: Mapped[int] = mapped_column(ForeignKey("notes.id"))
    name: Mapped[str] = mapped_column(String(40))


manager = ConnectionManager({
    "main": PoolConfig(url=os.environ.get("NOTES_DB_URL", "postgresql+asyncpg://notes@127.0.0.1/notes"),
                       size=5, overflow=5, timeout=5),
    "audit": PoolConfig(url=os.environ.get("NOTES_AUDIT_URL", "mongodb://127.0.0.1:27017/notes"),
                        size=2, overflow=2, timeout=5),
})
app = FastAPI(lifespan=manager.lifespan)
add_exception_handlers(app)  # 503s for the fast path below, as Depends gives them


@app.post("/notes", status_code=201)
async def create_note(title: str, db: AsyncSession = Depends(manager.session("main")),
                      audit: Any = Depends(manager.session("audit"))) -> dict[str, Any]:
    note = Note(title=title)
    db.add(note)
    await db.flush()
    await audit.events.insert_one({"event": "created", "note": note.id})
    return {"id": note.id, "title": note.title}


@app.get("/notes")
async def list_notes(db: AsyncSession = Depends(manager.session("main", readonly=True))
                     ) -> list[str]:
    return list((await db.execute(select(Note.title).order_by(Note.id))).scalars())


@app.post("/notes/import")
async def import_notes(titles: list[str],
                       db: AsyncSession = Depends(manager.session("main"))) -> dict[str, int]:
    """All or nothing: a duplicate title fails the request, and nothing of it is kept."""
    for title in titles:
        db.add(Note(title=title))
        await db.flush()  # IntegrityError on a duplicate: a 500, rolled back
    return {"imported": len(titles)}


@app.post("/notes/{note_id}/tags")
async def tag_note(note_id: int, names: list[str],
                   db: AsyncSession = Depends(manager.session("main"))) -> dict[str, int]:
    """Each tag in a savepoint of its own: a tag that fails is skipped, the others are kept."""
    if await db.get(Note, note_id) is None:
        raise HTTPException(404, f"no note {note_id}")
    kept = 0
    for name in names:
        try:
            async with db.begin_nested():
                if len(name) > 40:
                    raise ValueError(name)
                db.add(Tag(note_id=note_id, name=name))
        except ValueError:
            continue
        kept += 1
    return {"kept": kept}


@app.get("/notes/count")
async def count_notes() -> dict[str, int]:
    """The fast path: the driver's own connection, no ORM session."""
    async with manager.connection("main") as conn:
        if manager.pool("main").config.driver_name == "asyncpg":
            return {"count": int(await conn.fetchval("SELECT count(*) FROM notes"))}
    async with manager.session("main") as db:  # other drivers: a session outside a request
        return {"count": int((await db.execute(select(func.count(Note.id)))).scalar_one())}


@app.get("/audit")
async def audit_events(audit: Any = Depends(manager.session("audit"))) -> list[str]:
    return [e["event"] async for e in audit.events.find({}, {"_id": 0}).sort("note", 1)]
