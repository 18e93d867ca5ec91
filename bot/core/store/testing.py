"""In-process stand-ins for tests and benchmarks (needs the `dev` extra: mongomock-motor).

mongomock evaluates every query by scanning every document of the collection: a lookup by `_id`
costs O(collection size) (about 19 ms per `find_one_and_update` with 10,000 jobs on these
machines), where a real server answers it from its `_id` index. `mongomock_client()` gives each
collection the store touches a direct `_id` lookup, so a benchmark of the Mongo adapter over
mongomock measures the adapter rather than mongomock's scan. Every other query still scans, and
every match is still checked by mongomock's own `filter_applies`, so results are unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any

from bot.core.store.mongo import MongoStore

log = logging.getLogger(__name__)

_MISSING = object()


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


def mongomock_client(**kwargs: Any) -> Any:
    """A mongomock-motor client (tz-aware, like `make_client`'s)."""
    from mongomock_motor import AsyncMongoMockClient

    kwargs.setdefault("tz_aware", True)
    return AsyncMongoMockClient(**kwargs)


def mongomock_store(
    *, client: Any | None = None, db_name: str = "imaginebot_test", id_index: bool = True
) -> MongoStore:
    """A `MongoStore` over mongomock (shared `client` for several stores on one database).

    `id_index=True` adds the `_id` lookup described in the module docstring.
    """
    store = MongoStore(client=client or mongomock_client(), db_name=db_name)
    if id_index:
        for coll in (store.jobs, store.users, store.guilds, store.audit, store.meta):
            _by_id(coll._AsyncMongoMockCollection__collection)
    return store
