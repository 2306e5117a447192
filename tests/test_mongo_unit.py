"""A Mongo unit is a faithful handle: with `transaction: true` every call that takes `session=`
joins the unit's transaction (it reads its own writes; an aborted unit leaves nothing), the app's
own `except` clauses keep catching, other databases go through the unit, both drivers' call shapes
work on both drivers, and outages are typed. PyMongo and Motor on the Mongo-wire server.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import bson
import httpx
import pymongo
import pytest
from fastapi import Depends, FastAPI
from pymongo import InsertOne
from pymongo.errors import AutoReconnect, NotPrimaryError, OperationFailure, PyMongoError

from connman import (
    ConfigurationError,
    ConnectionLost,
    ConnectionManager,
    ConnmanError,
    ServerUnavailable,
    StatementTimeout,
)
from connman.backends._mongo_calls import OUTSIDE_TRANSACTION, SESSION_CALLS
from connman.fastapi import unavailable_from

from ._targets import Target, serve
from .test_mongo import Make, admin, coll, mongo_only

__all__ = ["coll"]  # a fixture, shared with tests/test_mongo.py


@contextlib.asynccontextmanager
async def failpoint(client: Any, mode: Any, **data: Any) -> AsyncIterator[None]:
    await client.admin.command({"configureFailPoint": "failCommand", "mode": mode, "data": data})
    try:
        yield
    finally:
        await client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})


class Abort(Exception):
    """Raised to end a unit with an error: its transaction is aborted."""


# ---------------------------------------------------------------------------- the session table


def test_the_session_table_matches_what_pymongo_accepts() -> None:
    from pymongo.asynchronous.collection import AsyncCollection
    from pymongo.asynchronous.database import AsyncDatabase
    from pymongo.asynchronous.mongo_client import AsyncMongoClient as Client

    for kind, cls in (("collection", AsyncCollection), ("database", AsyncDatabase),
                      ("client", Client)):
        for name in SESSION_CALLS[kind]:
            params = inspect.signature(getattr(cls, name)).parameters
            assert "session" in params or any(
                p.kind is p.VAR_KEYWORD for p in params.values()), (kind, name)
        # Every call PyMongo names `session=` for is in the table.
        for name, fn in inspect.getmembers(cls, callable):
            if not name.startswith("_") and "session" in inspect.signature(fn).parameters:
                assert name in SESSION_CALLS[kind], (kind, name)
    # The one private reach of connman.backends._mongo_errors: the app's pymongo.timeout().
    from pymongo import _csot

    assert _csot.get_timeout() is None
    with pymongo.timeout(5):
        assert _csot.get_timeout() is not None


# ---------------------------------------------------------------------------- every call joins

Call = Callable[[Any, str], Awaitable[Any]]


async def _raw_count(db: Any, c: str) -> int:
    batches = [b async for b in db[c].find_raw_batches({})]
    return sum(len(bson.decode_all(b)) for b in batches)


async def _raw_agg_count(db: Any, c: str) -> int:
    batches = [b async for b in db[c].aggregate_raw_batches([{"$match": {}}])]
    return sum(len(bson.decode_all(b)) for b in batches)


# Reads: how many documents the call sees (the unit inserted one, uncommitted).
READS: dict[str, Call] = {
    "find": lambda db, c: _len(db[c].find({}).to_list(None)),
    "find_iter": lambda db, c: _alen(db[c].find({})),
    "find_one": lambda db, c: _is_doc(db[c].find_one({})),
    "find_raw_batches": _raw_count,
    "aggregate_awaited": lambda db, c: _len_awaited(db[c].aggregate([{"$match": {}}])),
    "aggregate_cursor": lambda db, c: _len(db[c].aggregate([{"$match": {}}]).to_list(None)),
    "aggregate_raw_batches": _raw_agg_count,
    "distinct": lambda db, c: _len(db[c].distinct("_id")),
    "count_documents": lambda db, c: db[c].count_documents({}),
    "estimated_document_count": lambda db, c: db[c].estimated_document_count(),
    "database_command_find": lambda db, c: _cmd_find(db, c),
    "database_cursor_command": lambda db, c: _len_awaited(db.cursor_command("find", c)),
    "database_aggregate_lookup": lambda db, c: _len(db.aggregate([
        {"$documents": [{"x": 1}]},
        {"$lookup": {"from": c, "pipeline": [], "as": "found"}},
        {"$unwind": "$found"}]).to_list(None)),
    "unit_database": lambda db, c: db.database(db.name)[c].count_documents({}),
    "unit_client": lambda db, c: db.client[db.name][c].count_documents({}),
    "collection_database": lambda db, c: db[c].database[c].count_documents({}),
}


async def _len(aw: Awaitable[Any]) -> int:
    return len(await aw)


async def _alen(cursor: Any) -> int:
    return len([d async for d in cursor])


async def _is_doc(aw: Awaitable[Any]) -> int:
    return int(await aw is not None)


async def _len_awaited(pending: Any) -> int:
    return len(await (await pending).to_list(None))


async def _cmd_find(db: Any, c: str) -> int:
    reply = await db.command({"find": c, "filter": {}})
    return len(reply["cursor"]["firstBatch"])


@mongo_only
@pytest.mark.parametrize("call", sorted(READS))
async def test_a_read_in_a_transaction_unit_sees_the_units_own_writes(
        call: str, coll: str, make_manager: Make, target: Target) -> None:
    m = make_manager(transaction=True)
    async with m, admin(target) as client:
        await client.connman.create_collection(coll)
        with pytest.raises(Abort):
            async with m.session("main") as db:
                await db[coll].insert_one({"_id": "own", "v": 1})
                assert await READS[call](db, coll) == 1
                raise Abort
        assert await client.connman[coll].count_documents({}) == 0
        async with m.session("main") as db:  # and an empty collection reads as empty
            assert await READS[call](db, coll) == 0


async def _seed(db: Any, c: str) -> None:
    await db[c].insert_one({"_id": "seed", "v": 0})


# Writes: each changes the collection; after an abort, the committed state is what it was.
WRITES: dict[str, Call] = {
    "insert_one": lambda db, c: db[c].insert_one({"_id": "w"}),
    "insert_many": lambda db, c: db[c].insert_many([{"_id": "w"}, {"_id": "w2"}]),
    "update_one": lambda db, c: db[c].update_one({"_id": "seed"}, {"$set": {"v": 9}}),
    "update_many": lambda db, c: db[c].update_many({}, {"$set": {"v": 9}}),
    "replace_one": lambda db, c: db[c].replace_one({"_id": "seed"}, {"v": 9}),
    "delete_one": lambda db, c: db[c].delete_one({"_id": "seed"}),
    "delete_many": lambda db, c: db[c].delete_many({}),
    "find_one_and_update": lambda db, c: db[c].find_one_and_update(
        {"_id": "seed"}, {"$set": {"v": 9}}),
    "find_one_and_replace": lambda db, c: db[c].find_one_and_replace({"_id": "seed"}, {"v": 9}),
    "find_one_and_delete": lambda db, c: db[c].find_one_and_delete({"_id": "seed"}),
    "bulk_write": lambda db, c: db[c].bulk_write([InsertOne({"_id": "w"})]),
    "database_command_insert": lambda db, c: db.command({"insert": c, "documents": [{"_id": "w"}]}),
    "unit_database": lambda db, c: db.database(db.name)[c].insert_one({"_id": "w"}),
    "unit_client": lambda db, c: db.client[db.name][c].insert_one({"_id": "w"}),
    "create_index": lambda db, c: db[f"{c}_new"].create_index("k"),
    "create_indexes": lambda db, c: db[f"{c}_new"].create_indexes([pymongo.IndexModel("k")]),
    "create_collection": lambda db, c: db.create_collection(f"{c}_new"),
}


async def _state(client: Any, c: str) -> Any:
    docs = sorted([d async for d in client.connman[c].find({})], key=lambda d: str(d["_id"]))
    names = sorted(await client.connman.list_collection_names())
    return docs, names


async def _unit_sees(db: Any, c: str) -> Any:
    return sorted([d async for d in db[c].find({})], key=lambda d: str(d["_id"]))


@mongo_only
@pytest.mark.parametrize("call", sorted(WRITES))
async def test_a_write_in_an_aborted_transaction_unit_leaves_nothing(
        call: str, coll: str, make_manager: Make, target: Target) -> None:
    m = make_manager(transaction=True)
    async with m, admin(target) as client:
        await client.connman.create_collection(coll)
        await _seed(client.connman, coll)
        before = await _state(client, coll)
        with pytest.raises(Abort):
            async with m.session("main") as db:
                seen_before = await _unit_sees(db, coll)
                await WRITES[call](db, coll)
                seen_after = await _unit_sees(db, coll)
                if not call.startswith("create_"):
                    assert seen_after != seen_before  # the unit reads its own write
                raise Abort
        assert await _state(client, coll) == before
        async with m.session("main") as db:  # committed, it is applied
            await WRITES[call](db, coll)
        assert await _state(client, coll) != before


@mongo_only
async def test_commands_the_server_refuses_in_a_transaction_never_run_outside_it(
        coll: str, make_manager: Make, target: Target) -> None:
    """drop, rename, list_indexes, ...: the unit passes its session, so the server refuses
    them (mongod does: OperationNotSupportedInTransaction) instead of running them outside the
    transaction, where an abort could not undo them. A change stream runs outside it (a read)."""
    m = make_manager(transaction=True)
    refused: dict[str, Call] = {
        "drop": lambda db, c: db[c].drop(),
        "rename": lambda db, c: db[c].rename(f"{c}_renamed"),
        "drop_collection": lambda db, c: db.drop_collection(c),
        "list_indexes": lambda db, c: _len(db[c].list_indexes().to_list(None)),
        "index_information": lambda db, c: db[c].index_information(),
        "list_collection_names": lambda db, c: db.list_collection_names(),
        "list_collections": lambda db, c: _len(db.list_collections().to_list(None)),
        "options": lambda db, c: db[c].options(),
        "drop_index": lambda db, c: db[c].drop_index("k_1"),
        "drop_indexes": lambda db, c: db[c].drop_indexes(),
    }
    async with m, admin(target) as client:
        await client.connman.create_collection(coll)
        await client.connman[coll].create_index("k")
        for name, call in refused.items():
            with pytest.raises(OperationFailure):
                async with m.session("main") as db:
                    await call(db, coll)
            assert coll in await client.connman.list_collection_names(), name
            assert "k_1" in await client.connman[coll].index_information(), name
        async with m.session("main") as db:
            assert "watch" in OUTSIDE_TRANSACTION
            async with db[coll].watch(max_await_time_ms=50) as stream:
                assert await stream.try_next() is None


# ---------------------------------------------------------------------------- both call shapes


@mongo_only
async def test_both_drivers_call_shapes_work_on_both_drivers(
        coll: str, make_manager: Make, target: Target) -> None:
    m = make_manager()
    pipeline = [{"$match": {}}]
    async with m, admin(target) as client:
        await client.connman[coll].insert_many([{"n": i} for i in range(3)])
        async with m.session("main") as db:
            c = db[coll]
            # PyMongo's shape: await the call for the cursor.
            assert len(await (await c.aggregate(pipeline)).to_list(None)) == 3
            assert len(await (await c.list_indexes()).to_list(None)) == 1
            assert coll in [d["name"] async for d in await db.list_collections()]
            async with await c.watch(max_await_time_ms=50) as stream:
                assert await stream.try_next() is None
            # Motor's shape: the call is the cursor.
            assert len(await c.aggregate(pipeline).to_list(None)) == 3
            assert len([d async for d in c.aggregate(pipeline)]) == 3
            assert (await c.aggregate(pipeline).next())["n"] in (0, 1, 2)
            assert len(await c.list_indexes().to_list(None)) == 1
            assert coll in [d["name"] async for d in db.list_collections()]
            async with c.watch(max_await_time_ms=50) as stream:
                assert await stream.try_next() is None
            # find is a cursor on both; awaiting it is harmless.
            assert len(await (await c.find({})).to_list(None)) == 3


# ---------------------------------------------------------------------------- other databases


@mongo_only
async def test_another_database_through_the_unit_is_in_its_transaction(
        coll: str, make_manager: Make, target: Target) -> None:
    m = make_manager(transaction=True)
    tenant = f"tenant_{uuid.uuid4().hex[:8]}"
    assert m.session("main", database=tenant) is m.session("main", database=tenant)
    assert m.session("main", database=tenant) is not m.session("main")
    async with m, admin(target) as client:
        await client[tenant].create_collection(coll)
        with pytest.raises(Abort):
            async with m.session("main", database=tenant) as db:
                assert db.name == tenant
                await db[coll].insert_one({"_id": 1})
                assert await db[coll].count_documents({}) == 1
                raise Abort
        assert await client[tenant][coll].count_documents({}) == 0
        async with m.session("main", database=tenant) as db:
            await db[coll].insert_one({"_id": 1})
        assert await client[tenant][coll].count_documents({}) == 1
        assert await client.connman[coll].count_documents({}) == 0
        async with m.session("main") as db:
            with pytest.raises(TypeError, match=r"manager\.native"):
                await db.client.close()
            assert await db.client.get_database(tenant)[coll].count_documents({}) == 1


def test_database_is_refused_for_a_sql_pool(tmp_path: Any) -> None:
    m = ConnectionManager({"main": f"sqlite+aiosqlite:///{tmp_path}/x.db"})
    with pytest.raises(ConfigurationError, match="'main'"):
        m.session("main", database="other")


# ---------------------------------------------------------------------------- the app's excepts


@mongo_only
async def test_the_apps_own_except_clauses_catch_the_same_with_and_without_connman(
        coll: str, make_manager: Make, target: Target) -> None:
    m = make_manager(statement_timeout=0.5)
    app = FastAPI(lifespan=m.lifespan)

    async def guarded(work: Callable[[], Awaitable[Any]]) -> dict[str, str]:
        try:
            await work()
        except NotPrimaryError:
            return {"caught": "NotPrimaryError"}
        except PyMongoError as exc:  # NetworkTimeout is an AutoReconnect: one clause for both
            return {"caught": "PyMongoError", "cls": type(exc).__name__,
                    "timeout": str(exc.timeout)}
        return {"caught": ""}

    @app.get("/app-timeout")
    async def app_timeout(native: bool = False, db: Any = Depends(m.session("main"))) -> Any:
        target_db = m.native("main").connman if native else db

        async def work() -> Any:
            with pymongo.timeout(0.3):
                return await target_db[coll].find_one({})
        return await guarded(work)

    @app.post("/write")
    async def write(native: bool = False, db: Any = Depends(m.session("main"))) -> Any:
        target_db = m.native("main").connman if native else db
        return await guarded(lambda: target_db[coll].insert_one({"k": 1}))

    @app.get("/uncaught")
    async def uncaught(db: Any = Depends(m.session("main"))) -> Any:
        return {"doc": str(await db[coll].find_one({}))}

    async with admin(target) as client:
        await client.connman.create_collection(coll)
        async with m, httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                        base_url="http://t") as http:
            # The app's own pymongo.timeout(): PyMongo's timeout, caught by `except PyMongoError`.
            async with failpoint(client, {"times": 2}, failCommands=["find"],
                                 blockConnection=True, blockTimeMS=1000,
                                 appName="connman:main"):
                with_cm = (await http.get("/app-timeout")).json()
                without = (await http.get("/app-timeout", params={"native": True})).json()
            # Under the app's own deadline, the very class PyMongo raises without connman.
            assert with_cm == without
            assert with_cm["caught"] == "PyMongoError"
            assert with_cm["timeout"] == "True"
            # connman's own statement_timeout, not caught by the app: 503, no Retry-After.
            # (times 2: PyMongo 4.13's socketTimeoutMS bound lets the read be retried once)
            async with failpoint(client, {"times": 2}, failCommands=["find"],
                                 blockConnection=True, blockTimeMS=1500,
                                 appName="connman:main"):
                r = await http.get("/uncaught")
            assert r.status_code == 503
            assert "retry-after" not in r.headers
        assert await client.connman[coll].count_documents({}) == 0


@mongo_only
async def test_a_statement_timeout_keeps_the_drivers_class_and_cause(
        coll: str, make_manager: Make, target: Target) -> None:
    m = make_manager(statement_timeout=0.3)
    async with m, admin(target) as client, failpoint(
            client, {"times": 2}, failCommands=["find"], blockConnection=True,
            blockTimeMS=1500, appName="connman:main"):
        with pytest.raises(StatementTimeout) as info:
            async with m.session("main") as db:
                await db[coll].find_one({})
        assert isinstance(info.value, PyMongoError)
        assert info.value.timeout
        assert isinstance(info.value.__cause__, PyMongoError)
        assert "'main'" in str(info.value)


# ---------------------------------------------------------------------------- outages


@mongo_only
@pytest.mark.parametrize("transaction", [False, True])
async def test_a_not_primary_refusal_is_server_unavailable_and_nothing_is_applied(
        coll: str, make_manager: Make, target: Target, transaction: bool) -> None:
    m = make_manager(transaction=transaction)
    async with m, admin(target) as client:
        await client.connman.create_collection(coll)
        async with failpoint(client, {"times": 4}, failCommands=["insert"], errorCode=10107,
                             appName="connman:main"):
            with pytest.raises(ServerUnavailable) as info:
                async with m.session("main") as db:
                    await db[coll].insert_one({"k": 1})
        err = info.value
        assert err.kind == "read_only"
        assert err.retry_after >= 1
        assert err.pool == "main"
        assert isinstance(err, NotPrimaryError)
        assert isinstance(err.__cause__, NotPrimaryError)
        assert "full error" not in str(err)
        http = unavailable_from(err)
        assert http is not None
        assert http.status_code == 503
        assert http.headers is not None
        assert http.headers["Retry-After"]
        # Without connman the app's `except NotPrimaryError` catches the same refusal.
        async with failpoint(client, {"times": 4}, failCommands=["insert"], errorCode=10107,
                             appName="connman:main"):
            with pytest.raises(NotPrimaryError):
                await m.native("main").connman[coll].insert_one({"k": 1})
        assert m.stats("main")["requests_unavailable"] >= 1
        assert await client.connman[coll].count_documents({}) == 0


@mongo_only
async def test_a_connection_reset_mid_operation_is_connection_lost(
        coll: str, make_manager: Make, target: Target) -> None:
    m = make_manager()
    async with m, admin(target) as client:
        await client.connman.create_collection(coll)
        # A read (PyMongo retries it once): nothing can have been applied -> Retry-After.
        async with failpoint(client, {"times": 2}, failCommands=["find"], closeConnection=True,
                             appName="connman:main"):
            with pytest.raises(ConnectionLost) as info:
                async with m.session("main") as db:
                    await db[coll].find_one({})
        assert info.value.retry_after is not None
        assert isinstance(info.value, AutoReconnect)
        # A write outside a transaction: its outcome is unknown -> no Retry-After.
        async with failpoint(client, {"times": 2}, failCommands=["insert"], closeConnection=True,
                             appName="connman:main"):
            with pytest.raises(ConnectionLost) as info:
                async with m.session("main") as db:
                    await db[coll].insert_one({"k": 1})
        assert info.value.retry_after is None
        # A database command that changes nothing (`ping`, `count`, ...), read by its name: a
        # read; an arbitrary command (it may write) is not.
        async with failpoint(client, {"times": 2}, failCommands=["count"], closeConnection=True,
                             appName="connman:main"):
            with pytest.raises(ConnectionLost) as info:
                async with m.session("main") as db:
                    await db.command({"count": coll})
        assert info.value.retry_after is not None
        assert "command count" in str(info.value)
        async with failpoint(client, {"times": 2}, failCommands=["insert"], closeConnection=True,
                             appName="connman:main"):
            with pytest.raises(ConnectionLost) as info:
                async with m.session("main") as db:
                    await db.command({"insert": coll, "documents": [{"k": 2}]})
        assert info.value.retry_after is None
        assert m.stats("main")["requests_lost"] >= 4
        assert await client.connman[coll].count_documents({}) <= 2


@mongo_only
async def test_a_connection_lost_in_a_transaction_or_its_commit(
        coll: str, make_manager: Make, target: Target) -> None:
    m = make_manager(transaction=True, timeout=1.0)
    async with m, admin(target) as client:
        await client.connman.create_collection(coll)
        # Mid-transaction: the unit is aborted, nothing applied -> Retry-After.
        async with failpoint(client, {"times": 1}, failCommands=["insert"], closeConnection=True,
                             appName="connman:main"):
            with pytest.raises(ConnectionLost) as info:
                async with m.session("main") as db:
                    await db[coll].insert_one({"k": 1})
        assert info.value.retry_after is not None
        assert await client.connman[coll].count_documents({}) == 0
        # The commit keeps being cut (retried within `timeout`): its outcome is unknown.
        async with failpoint(client, "alwaysOn", failCommands=["commitTransaction"],
                             closeConnection=True, appName="connman:main"):
            with pytest.raises(ConnectionLost) as info:
                async with m.session("main") as db:
                    await db[coll].insert_one({"k": 2})
        assert info.value.retry_after is None
        assert "outcome is unknown" in str(info.value)
        http = unavailable_from(info.value)
        assert http is not None
        assert http.status_code == 503
        assert not http.headers


@mongo_only
async def test_the_apps_own_asyncio_timeout_stays_its_timeout_error(
        coll: str, make_manager: Make, target: Target) -> None:
    m = make_manager()
    async with m, admin(target) as client, failpoint(
            client, {"times": 1}, failCommands=["find"], blockConnection=True,
            blockTimeMS=1000, appName="connman:main"), m.session("main") as db:
        with pytest.raises(TimeoutError) as info:
            async with asyncio.timeout(0.2):
                await db[coll].find_one({})
        assert not isinstance(info.value, ConnmanError)
        assert await db[coll].count_documents({}) == 0  # the unit goes on


@mongo_only
async def test_a_server_that_is_down_is_unreachable(
        coll: str, target: Target, managers: list[ConnectionManager]) -> None:
    from connman.testing import MongoWireServer

    with MongoWireServer() as server:
        url = server.url(database="connman") + "&serverMonitoringMode=poll&heartbeatFrequencyMS=500"
        m = ConnectionManager({"main": {"url": url, "driver": target.driver, "size": 1,
                                        "connect_timeout": 1.0, "timeout": 2.0}})
        managers.append(m)
        await m.open()
        server.kill()
        # The pooled connection's read may be cut first (ConnectionLost: a read, so Retry-After);
        # from then on the server refuses: ServerUnavailable("unreachable").
        seen: list[ConnmanError] = []
        deadline = asyncio.get_running_loop().time() + 15
        while not any(isinstance(e, ServerUnavailable) for e in seen):
            assert asyncio.get_running_loop().time() < deadline, seen
            with pytest.raises(ConnmanError) as info:
                async with m.session("main") as db:
                    await db[coll].find_one({})
            seen.append(info.value)
        for err in seen:
            assert isinstance(err, (ServerUnavailable, ConnectionLost)), err
            assert err.retry_after is not None
            assert err.retry_after >= 1
            assert isinstance(err, PyMongoError)
        assert isinstance(seen[-1], ServerUnavailable)
        assert seen[-1].kind == "unreachable"
        assert m.stats("main")["requests_unavailable"] >= 1
        await m.close()


# ---------------------------------------------------------------------------- under real HTTP


@mongo_only
async def test_concurrent_transfers_over_http_conserve_the_total(
        make_manager: Make, target: Target) -> None:
    m = make_manager(transaction=True, size=3, overflow=2, timeout=5.0)
    app = FastAPI(lifespan=m.lifespan)
    accounts = ["a", "b", "c", "d"]

    @app.post("/transfer")
    async def transfer(src: str, dst: str, db: Any = Depends(m.session("main"))) -> Any:
        s = await db.accounts.find_one({"_id": src})
        d = await db.accounts.find_one({"_id": dst})
        await asyncio.sleep(0.005)
        await db.accounts.update_one({"_id": src}, {"$set": {"bal": s["bal"] - 7}})
        await db.accounts.update_one({"_id": dst}, {"$set": {"bal": d["bal"] + 7}})
        return {"ok": True}

    rng = random.Random(7)
    pairs = [tuple(rng.sample(accounts, 2)) for _ in range(60)]
    async with admin(target) as client:
        await client.connman.accounts.drop()
        await client.connman.accounts.insert_many([{"_id": a, "bal": 1000} for a in accounts])
        async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as http:
            sem = asyncio.Semaphore(12)

            async def one(src: str, dst: str) -> httpx.Response:
                async with sem:
                    return await http.post("/transfer", params={"src": src, "dst": dst})

            responses = await asyncio.gather(*(one(s, d) for s, d in pairs))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 503}, codes
        assert all(r.headers.get("retry-after") for r in responses if r.status_code == 503)
        expected = dict.fromkeys(accounts, 1000)
        for (src, dst), r in zip(pairs, responses, strict=True):
            if r.status_code == 200:
                expected[src] -= 7
                expected[dst] += 7
        got = {d["_id"]: d["bal"] async for d in client.connman.accounts.find({})}
        assert sum(got.values()) == 4000
        assert got == expected  # exactly the 200s were applied
        assert codes.count(200) >= 1
        await client.connman.accounts.drop()


# ---------------------------------------------------------------------------- forgetting session=


@mongo_only
async def test_a_call_that_forgets_session_joins_only_inside_unit_bind(
        coll: str, make_manager: Make, target: Target) -> None:
    """What Beanie does when `session=` is forgotten: a call on the client outside the unit."""
    m = make_manager(transaction=True)
    async with m, admin(target) as client:
        await client.connman.create_collection(coll)
        outside = m.native("main").connman[coll]
        with pytest.raises(Abort):
            async with m.session("main") as db:
                await outside.insert_one({"_id": "forgotten"})  # no session=: not in the unit
                raise Abort
        assert await client.connman[coll].count_documents({"_id": "forgotten"}) == 1
        async with m.session("main") as db:
            bindable = hasattr(db.client_session, "bind")
            if not bindable:  # Motor, PyMongo < 4.17: refused, saying what to do instead
                with pytest.raises(TypeError, match=r"session=unit\.client_session"):
                    db.bind()
        if bindable:
            with pytest.raises(Abort):
                async with m.session("main") as db:
                    async with db.bind():
                        await outside.insert_one({"_id": "bound"})
                        assert await outside.count_documents({"_id": "bound"}) == 1
                    assert db.client_session.in_transaction  # still the unit's
                    raise Abort
            assert await client.connman[coll].count_documents({"_id": "bound"}) == 0
            async with m.session("main") as db, db.bind():
                await outside.insert_one({"_id": "bound"})
            assert await client.connman[coll].count_documents({"_id": "bound"}) == 1
        async with make_manager() as plain, plain.session("main") as db, db.bind():
            pass  # no transaction: nothing to bind, the block runs as is


# ---------------------------------------------------------------------------- opening


@mongo_only
async def test_a_failed_authentication_fails_the_open_at_once_in_one_line(target: Target) -> None:
    from connman import PoolStartupError
    from connman.testing import MongoWireServer

    with MongoWireServer(options=["--auth"]) as server:
        url = server.url(database="app").replace("mongodb://", "mongodb://app:s3cret-pw@")
        m = ConnectionManager({"docs": {"url": url, "driver": target.driver,
                                        "connect_timeout": 30.0}})
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(PoolStartupError) as info:
            await m.open()
        took = loop.time() - t0
    text = str(info.value)
    assert "'docs'" in text
    assert "authentication failed" in text
    assert "AuthenticationFailed" in text
    assert "\n" not in text
    assert "s3cret-pw" not in text
    assert "$clusterTime" not in text
    assert "signature" not in text
    assert took < 15.0  # not PyMongo's server-selection wait of connect_timeout (30 s)


def test_mongo_pool_is_the_typed_accessor(tmp_path: Any) -> None:
    m = ConnectionManager({"docs": "mongodb://127.0.0.1:1/app",
                           "sql": f"sqlite+aiosqlite:///{tmp_path}/x.db"})
    assert m.mongo_pool("docs").database_name == "app"
    with pytest.raises(TypeError, match="'sql'"):
        m.mongo_pool("sql")
