"""Beanie 2 documents inside connman's Mongo units of work (`transaction: true`).

Beanie binds its documents to the database given to `init_beanie`, not to the unit: each Beanie
call must get the unit's session, or it runs outside the transaction and its write is kept when
the request fails. Two ways, both shown below:

- `session=db.client_session` on every Beanie call (any PyMongo >= 4.13);
- `async with db.bind():` around the Beanie calls (PyMongo >= 4.17, driver `pymongo`): every
  operation of the pool's client in the block gets the unit's session, so a forgotten `session=`
  cannot escape the transaction.

Needs `pip install beanie` (2.x; not a connman dependency). Run the app with
`DOCS_URL=mongodb://127.0.0.1:27017/app?replicaSet=rs0 uvicorn examples.beanie_app:app`, or
`python -m examples.beanie_app` for a self-check against a throwaway Mongo-wire server.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from beanie import Document, init_beanie
from fastapi import Depends, FastAPI, HTTPException

from connman import ConnectionManager, MongoUnit


class Order(Document):
    """One order; `paid` orders are the ones a failed request must not leave behind."""

    sku: str
    paid: bool = False


def make_manager(url: str) -> ConnectionManager:
    """One Mongo pool, each unit of work one transaction."""
    return ConnectionManager({"docs": {"url": url, "transaction": True}})


manager = make_manager(os.environ.get("DOCS_URL", "mongodb://127.0.0.1:27017/app"))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with manager.lifespan(app):
        # Beanie's own handle: outside the gate and outside any unit until given a session.
        await init_beanie(database=manager.pool("docs").database, document_models=[Order])
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/orders")
async def create(sku: str, fail: bool = False,
                 db: MongoUnit = Depends(manager.session("docs"))) -> dict[str, Any]:
    """Insert an order with `session=`; a failure after it leaves nothing."""
    order = await Order(sku=sku).insert(session=db.client_session)
    if fail:
        raise HTTPException(402, "payment declined after the insert")
    return {"id": str(order.id)}


@app.post("/orders/{sku}/pay")
async def pay(sku: str, db: MongoUnit = Depends(manager.session("docs"))) -> dict[str, int]:
    """Mark orders paid inside `db.bind()` (PyMongo >= 4.17): no `session=` to forget."""
    async with db.bind():
        result = await Order.find(Order.sku == sku).update({"$set": {"paid": True}})
    return {"paid": result.modified_count if result is not None else 0}


async def _self_check(url: str) -> dict[str, int]:
    """Run the three ways against `url`: with session=, forgetting it, and bound."""
    m = make_manager(url)
    counts: dict[str, int] = {}
    async with m:
        await init_beanie(database=m.pool("docs").database, document_models=[Order])
        for how in ("session", "forgotten", "bound"):
            try:
                async with m.session("docs") as db:
                    if how == "session":
                        await Order(sku=how).insert(session=db.client_session)
                    elif how == "forgotten":
                        await Order(sku=how).insert()  # outside the transaction
                    else:
                        async with db.bind():
                            await Order(sku=how).insert()
                    raise RuntimeError("the request fails after its write")
            except (RuntimeError, TypeError):
                pass
            counts[how] = await Order.find(Order.sku == how).count()
    return counts


if __name__ == "__main__":
    from connman.testing import MongoWireServer

    with MongoWireServer() as server:
        left = asyncio.run(_self_check(server.url(database="app")))
    # Expected: {'session': 0, 'forgotten': 1, 'bound': 0} (bound: refused before PyMongo 4.17)
    print("documents left after the failed requests:", left)
