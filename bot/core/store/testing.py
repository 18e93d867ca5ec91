"""In-process stand-ins for tests and benchmarks (needs the `dev` extra: mongomock-motor).

Two differences from a real server are closed here, because tests would otherwise pass on
mongomock and fail on MongoDB:
- a closed client: mongomock's `close()` does nothing, where PyMongo refuses every later use
  ("Cannot use MongoClient after close"). `mongomock_client()` returns a client that refuses the
  same way, so a store that closes a client it does not own fails on mongomock too;
- speed: mongomock evaluates every query by scanning every document of the collection, so a lookup
  by `_id` costs O(collection size) (about 19 ms per `find_one_and_update` with 10,000 jobs on these
  machines), where a real server answers it from its `_id` index. `mongomock_store()` gives each
  collection the store touches a direct `_id` lookup, so a benchmark of the Mongo adapter over
  mongomock measures the adapter rather than mongomock's scan. Every other query still scans, and
  every match is still checked by mongomock's own `filter_applies`, so results are unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any

from pymongo.errors import InvalidOperation

from bot.core.store.mongo import MongoStore

log = logging.getLogger(__name__)

_MISSING = object()
CLOSED_MESSAGE = "Cannot use MongoClient after close"  # PyMongo's words


def _by_id(collection: Any) -> None:
    """Give one mongomock Collection a direct `_id` lookup for equality filters on `_id`."""
    from mongomock.filtering import filter_applies

    original: Callable[[Any], Iterator[Any]] = collection._iter_documents
    store = collection._store

    def iter_documents(filter: Any) -> Iterator[Any]:
        if isinstance(filter, Mapping):
            key = filter.get("_id", _MISSING)
            if key is not _MISSING and isinstance(key, Hashable) and not isinstance(key, Mapping):
                try:
                    doc = store[key]
                except KeyError:
                    return iter(())
                return iter((doc,)) if filter_applies(filter, doc) else iter(())
        return original(filter)

    collection._iter_documents = iter_documents


class _RefusedAfterClose:
    """A mongomock-motor database or collection whose calls fail once its client is closed."""

    def __init__(self, inner: Any, client: Any) -> None:
        self._inner = inner
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._client.check_open()
            result = attr(*args, **kwargs)
            return _RefusedAfterClose(result, self._client) if name == "get_collection" else result

        return call


def mongomock_client(**kwargs: Any) -> Any:
    """A mongomock-motor client (tz-aware, like `make_client`'s) that refuses use after `close()`.

    Pass `mock_mongo_client=` (a `mongomock.MongoClient`) to give several clients the same data, as
    several connections to one server would have.
    """
    from mongomock_motor import AsyncMongoMockClient

    class ClosableMockClient(AsyncMongoMockClient):  # type: ignore[misc, valid-type]
        closed = False

        def close(self) -> None:
            self.closed = True

        def check_open(self) -> None:
            if self.closed:
                raise InvalidOperation(CLOSED_MESSAGE)

        def get_database(self, *args: Any, **kwargs: Any) -> Any:
            self.check_open()
            return _RefusedAfterClose(super().get_database(*args, **kwargs), self)

        async def drop_database(self, *args: Any, **kwargs: Any) -> Any:
            self.check_open()
            return await super().drop_database(*args, **kwargs)

    kwargs.setdefault("tz_aware", True)
    return ClosableMockClient(**kwargs)


def mongomock_store(
    *, client: Any | None = None, db_name: str = "imaginebot_test", id_index: bool = True
) -> MongoStore:
    """A `MongoStore` over mongomock (shared `client` for several stores on one database).

    The store does not own the client (a test may share it between stores), so `close()` leaves
    it open. `id_index=True` adds the `_id` lookup described in the module docstring.
    """
    store = MongoStore(client=client or mongomock_client(), db_name=db_name)
    if id_index:
        for coll in (store.jobs, store.users, store.guilds, store.audit, store.meta):
            _by_id(coll._AsyncMongoMockCollection__collection)
    return store
