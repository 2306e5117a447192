"""Which PyMongo/Motor calls a Mongo unit treats how: the calls that take `session=`, those that
open a server cursor, those that do I/O, and the driver classes results are sorted by.

Data and lookups only (no I/O, no pool), so the unit and its tests share one table.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["CLIENT_REFUSED", "CURSOR_OPS", "OPENERS", "OUTSIDE_TRANSACTION", "SESSION_CALLS",
           "Kinds", "is_op", "kind_of", "takes_session"]

# Cursor methods that do I/O (Motor's `to_list` returns a Future that starts at once).
CURSOR_OPS = frozenset({"next", "try_next", "to_list", "explain", "distinct", "__anext__"})
# Calls that create a cursor on the server: its id is only in the reply (see `_in_own_task`).
# Whatever the driver, the unit returns a cursor that can be awaited (PyMongo's shape) and
# iterated, `to_list`-ed or entered (Motor's).
OPENERS = frozenset({"aggregate", "watch", "list_collections", "list_indexes",
                     "aggregate_raw_batches", "list_search_indexes", "cursor_command"})

# Which calls take `session=`, by the kind of object they are called on. PyMongo 4.13-4.20 name it
# in their signatures except `find`, `find_one` and `find_raw_batches` (through `**kwargs`); Motor
# forwards `**kwargs` to PyMongo. An explicit table rather than signatures read at run time, and
# tests/test_mongo_unit.py checks it against PyMongo's signatures on both dependency sets.
SESSION_CALLS: dict[str, frozenset[str]] = {
    "collection": frozenset({
        "find", "find_one", "find_raw_batches", "aggregate", "aggregate_raw_batches", "watch",
        "distinct", "count_documents", "bulk_write", "insert_one", "insert_many", "update_one",
        "update_many", "replace_one", "delete_one", "delete_many", "find_one_and_delete",
        "find_one_and_replace", "find_one_and_update", "create_index", "create_indexes",
        "drop_index", "drop_indexes", "list_indexes", "index_information", "drop", "rename",
        "options", "create_search_index", "create_search_indexes", "drop_search_index",
        "list_search_indexes", "update_search_index"}),
    "database": frozenset({
        "aggregate", "command", "cursor_command", "create_collection", "drop_collection",
        "list_collection_names", "list_collections", "validate_collection", "watch",
        "dereference"}),
    "client": frozenset({
        "bulk_write", "drop_database", "list_database_names", "list_databases", "server_info",
        "watch"}),
}
# Take `session=` but never run inside a transaction on any MongoDB server: a change stream.
# In a transaction unit they run outside it (a read: nothing of the unit escapes).
OUTSIDE_TRANSACTION = frozenset({"watch"})
# The client's calls a unit refuses: they would close or bypass the pool's client.
CLIENT_REFUSED = frozenset({"close", "aclose", "start_session", "bind", "aconnect"})


def kind_of(owner: Any) -> str:
    if isinstance(owner, Kinds.collections):
        return "collection"
    if isinstance(owner, Kinds.databases):
        return "database"
    return "client" if isinstance(owner, Kinds.clients) else ""


def takes_session(owner: Any, name: str) -> bool:
    """Whether `owner.name(...)` accepts `session=` on this driver (the table above)."""
    return name in SESSION_CALLS.get(kind_of(owner), frozenset())


_op_cache: dict[tuple[type, str], bool] = {}


def is_op(func: Any, owner: Any = None, name: str = "") -> bool:
    """Whether calling `func` starts I/O: a coroutine function, or a Motor asynchronized method."""
    key = (type(owner), name)
    known = _op_cache.get(key) if owner is not None else None
    if known is None:
        known = inspect.iscoroutinefunction(func) or bool(getattr(func, "is_async_method", False))
        if owner is not None:
            _op_cache[key] = known
    return known


class Kinds:
    """The driver classes a result is sorted by (imported once, lazily)."""

    collections: tuple[type, ...] = ()
    databases: tuple[type, ...] = ()
    clients: tuple[type, ...] = ()
    handles: tuple[type, ...] = ()
    cursors: tuple[type, ...] = ()
    streams: tuple[type, ...] = ()
    loaded = False

    @classmethod
    def load(cls) -> None:
        from pymongo.asynchronous.change_stream import AsyncChangeStream
        from pymongo.asynchronous.collection import AsyncCollection
        from pymongo.asynchronous.command_cursor import AsyncCommandCursor
        from pymongo.asynchronous.cursor import AsyncCursor
        from pymongo.asynchronous.database import AsyncDatabase
        from pymongo.asynchronous.mongo_client import AsyncMongoClient

        collections: list[type] = [AsyncCollection]
        databases: list[type] = [AsyncDatabase]
        clients: list[type] = [AsyncMongoClient]
        cursors: list[type] = [AsyncCursor, AsyncCommandCursor]
        streams: list[type] = [AsyncChangeStream]
        try:
            from motor import motor_asyncio as m
        except ImportError:
            pass
        else:
            collections.append(m.AsyncIOMotorCollection)
            databases.append(m.AsyncIOMotorDatabase)
            clients.append(m.AsyncIOMotorClient)
            cursors += [m.AsyncIOMotorCursor, m.AsyncIOMotorCommandCursor,
                        m.AsyncIOMotorLatentCommandCursor]
            streams.append(m.AsyncIOMotorChangeStream)
        cls.collections, cls.databases, cls.clients = (
            tuple(collections), tuple(databases), tuple(clients))
        cls.handles = (*cls.databases, *cls.collections)
        cls.cursors, cls.streams = tuple(cursors), tuple(streams)
        cls.loaded = True
