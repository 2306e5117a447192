"""Views that commit themselves: `commit="manual"`.

Many apps ported to connman already call `await db.commit()` in their views, sometimes more than
once per request, and rely on work they did not commit being discarded. With `commit="manual"`
connman does not commit for them: it rolls back whatever a view left uncommitted (on success as on
error) and always returns the connection.

Run it with `BANK_DATABASE_URL=postgresql+asyncpg://app:secret@127.0.0.1:5432/app uvicorn
examples.manual_commit_app:app` (or `sqlite+aiosqlite:///bank.db`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import cache
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Integer, String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from connman import ConnectionManager


class Settings(BaseSettings):
    """The app's settings: `BANK_DATABASE_URL` or a `.env`."""

    model_config = SettingsConfigDict(env_prefix="BANK_", env_file=".env", extra="ignore")
    database_url: str


@cache
def get_settings() -> Settings:
    return Settings()  # type: ignore[call-arg]  # pydantic-settings reads the environment


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "bank_accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    balance: Mapped[int] = mapped_column(Integer, default=0)


class AccountOut(BaseModel):
    id: int
    owner: str
    balance: int


class Transfer(BaseModel):
    source: int
    target: int
    amount: int


def create_app(settings: Callable[[], Settings] = get_settings) -> FastAPI:
    def pools() -> dict[str, Any]:
        return {"main": {"url": settings().database_url, "commit": "manual"}}

    manager = ConnectionManager(pools)
    db_session = manager.session("main")

    @asynccontextmanager
    async def create_tables(app: FastAPI) -> AsyncIterator[None]:
        async with manager.session("main") as db:
            await db.run_sync(lambda s: Base.metadata.create_all(s.connection()))
            await db.commit()  # manual: DDL too is kept only when committed
        yield

    app = FastAPI(lifespan=manager.wrap_lifespan(create_tables))
    app.state.manager = manager

    async def account(db: AsyncSession, account_id: int) -> Account:
        found = await db.get(Account, account_id)
        if found is None:
            raise HTTPException(404, f"no account {account_id}")
        return found

    @app.post("/accounts", response_model=AccountOut)
    async def open_account(owner: str, deposit: int = 0,
                           db: AsyncSession = Depends(db_session)) -> Account:
        acct = Account(owner=owner, balance=deposit)
        db.add(acct)
        await db.commit()  # the view decides when its work is kept
        return acct

    @app.get("/accounts/{account_id}", response_model=AccountOut)
    async def read_account(account_id: int, db: AsyncSession = Depends(db_session)) -> Account:
        return await account(db, account_id)

    @app.post("/transfers")
    async def transfer(t: Transfer, db: AsyncSession = Depends(db_session)) -> dict[str, int]:
        source, target = await account(db, t.source), await account(db, t.target)
        source.balance -= t.amount
        target.balance += t.amount
        await db.flush()
        if source.balance < 0:
            # Nothing committed yet: connman rolls both updates back.
            raise HTTPException(409, "insufficient funds")
        await db.commit()
        return {"source": source.balance, "target": target.balance}

    @app.post("/accounts/{account_id}/preview-interest")
    async def preview_interest(account_id: int, percent: int,
                               db: AsyncSession = Depends(db_session)) -> dict[str, int]:
        # Applies the interest, lets the database compute the result, and never commits: the
        # update is rolled back when the request ends, and the response shows what it would be.
        acct = await account(db, account_id)
        acct.balance += acct.balance * percent // 100
        await db.flush()
        balance = (await db.execute(select(Account.balance).where(Account.id == account_id)))
        return {"balance": balance.scalar_one()}

    return app


app = create_app()
