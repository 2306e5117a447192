"""A small app for measuring what connman's pytest plugin costs a suite (see run.py)."""

from __future__ import annotations

import os

from fastapi import Depends, FastAPI
from sqlalchemy import ForeignKey, Integer, String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from connman import ConnectionManager


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(40))


class Tag(Base):
    __tablename__ = "tags"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"))
    name: Mapped[str] = mapped_column(String(40))


manager = ConnectionManager({"main": {
    "url": os.environ.get("COST_DB_URL", "postgresql+asyncpg://app@127.0.0.1:1/app"),
    "size": 5, "overflow": 5, "timeout": 10}})
app = FastAPI(lifespan=manager.lifespan)


@app.post("/items", status_code=201)
async def add(name: str, db: AsyncSession = Depends(manager.session("main"))) -> dict[str, int]:
    item = Item(name=name)
    db.add(item)
    await db.flush()
    db.add(Tag(item_id=item.id, name="new"))
    return {"id": item.id}


@app.get("/items")
async def items(db: AsyncSession = Depends(manager.session("main", readonly=True))) -> list[str]:
    return list((await db.execute(select(Item.name).order_by(Item.id))).scalars())
