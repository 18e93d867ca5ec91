"""One `store` fixture, parametrized over every driver, so one contract suite tests them all.

- `sqlite`: a fresh file in the test's temp dir;
- `mongomock`: the Mongo driver over mongomock-motor (in-process);
- `sqlite-buffered`: the SQLite driver behind `BufferedStore` (the wrapper must keep the contract);
- `mongodb`: a real server when `MONGODB_TEST_URI` is set (each test gets its own database,
  dropped afterwards); skipped with the reason otherwise.

`store_backend.new_store()` opens another, independent store on the same database (a second
SQLite connection on the same file, or a second MongoStore on the same client/server): that is
what the concurrency tests race against each other.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.core.store.base import Store
from bot.core.store.buffer import BufferedStore
from bot.core.store.mongo import MongoStore, make_client
from bot.core.store.sqlite import SQLiteStore
from bot.core.store.testing import mongomock_client, mongomock_store

log = logging.getLogger(__name__)

MONGODB_TEST_URI = os.environ.get("MONGODB_TEST_URI", "").strip()
NO_MONGODB_REASON = (
    "MONGODB_TEST_URI is not set: the real-MongoDB leg of the store contract is skipped "
    "(run a mongod and set e.g. MONGODB_TEST_URI=mongodb://127.0.0.1:27017 to run it)"
)


class Backend:
    """Makes stores on one database; closes every store it made."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.db_name = f"imaginebot_test_{uuid.uuid4().hex[:12]}"
        self._stores: list[Store] = []
        self._databases: set[str] = set()
        # every Mongo store of one backend shares the backend's client, as the bot's stores share
        # the one they are handed; the store never closes it, the backend does at the end
        self._client: Any = None
        if kind == "mongomock":
            self._client = mongomock_client()
        elif kind == "mongodb":
            self._client = make_client(MONGODB_TEST_URI)

    def make(self, *, other: str = "") -> Store:
        """An unopened store on this backend's database (`other`: on a second, separate one)."""
        store: Store
        db_name = f"{self.db_name}_{other}" if other else self.db_name
        path = self.tmp_path / "data" / (f"{other}.db" if other else "bot.db")
        if self.kind == "sqlite":
            store = SQLiteStore(path=path)
        elif self.kind == "sqlite-buffered":
            store = BufferedStore(SQLiteStore(path=path), max_items=100)
        elif self.kind == "mongomock":
            store = mongomock_store(client=self._client, db_name=db_name)
        else:
            store = MongoStore(client=self._client, db_name=db_name, write_concern="majority")
            self._databases.add(db_name)
        self._stores.append(store)
        return store

    async def new_store(self, *, other: str = "") -> Store:
        store = self.make(other=other)
        await store.open()
        return store

    async def aclose(self) -> None:
        for store in reversed(self._stores):
            await store.close()
        if self.kind == "mongodb":
            try:
                for db_name in self._databases:
                    await self._client.drop_database(db_name)
            finally:
                self._client.close()


@pytest.fixture(params=["sqlite", "sqlite-buffered", "mongomock", "mongodb"])
async def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "mongodb" and not MONGODB_TEST_URI:
        print(NO_MONGODB_REASON)
        pytest.skip(NO_MONGODB_REASON)
    backend = Backend(request.param, tmp_path)
    try:
        yield backend
    finally:
        await backend.aclose()


@pytest.fixture
async def store(store_backend: Backend) -> Store:
    """An opened store of each driver."""
    return await store_backend.new_store()
