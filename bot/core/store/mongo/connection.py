"""The Mongo store's database handle, its schema check at open, and the one place driver errors
become `StoreUnavailable`.

Writes use the configured write concern with `j=True`, so an acknowledged write is journaled.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import ConnectionFailure, InvalidOperation, PyMongoError, WriteConcernError

from bot.core.jobs import Job
from bot.core.store.base import Store, StoreUnavailable
from bot.core.store.mongo import schema
from bot.core.store.mongo.client import parse_write_concern
from bot.core.store.mongo.documents import Seq, job_from_doc

log = logging.getLogger(__name__)


class MongoConnection(Store):
    """Collections, open/close and plumbing; the record operations live in the sibling mixins.

    The store closes only a client it built itself (see `__init__`).
    """

    name = "mongo"

    def __init__(
        self,
        *,
        db_name: str,
        client: Any | None = None,
        client_factory: Callable[[], Any] | None = None,
        write_concern: str | int = "majority",
    ) -> None:
        """Either `client` (the caller's: the store never closes it) or `client_factory` (the store
        builds its own client, closes it in `close()` and builds a fresh one if opened again, since a
        closed MongoClient cannot be used again)."""
        if (client is None) == (client_factory is None):
            raise ValueError("MongoStore needs either client= or client_factory=, not both or neither")
        self.db_name = db_name
        self.write_concern = parse_write_concern(write_concern)
        self._factory = client_factory
        self._seq = Seq()
        self._opened = False
        self._bind(client if client is not None else self._build_client())

    def _build_client(self) -> Any:
        assert self._factory is not None
        return self._factory()

    def _bind(self, client: Any) -> None:
        self.client = client
        self._client_closed = False
        self.db = client.get_database(self.db_name, write_concern=self.write_concern)
        self.jobs = self.db.get_collection("jobs")
        self.users = self.db.get_collection("users")
        self.guilds = self.db.get_collection("guild_settings")
        self.audit = self.db.get_collection("audit")
        self.meta = self.db.get_collection("meta")
        self.defaults = self.db.get_collection("defaults")

    @property
    def owns_client(self) -> bool:
        return self._factory is not None

    async def open(self) -> None:
        if self._opened:
            return
        if self._client_closed:  # only a client the store built is ever closed by it
            self._bind(self._build_client())
        async with self._guard():
            await self._migrate()
            for collection, indexes in schema.INDEXES.items():
                for keys in indexes:
                    await self.db.get_collection(collection).create_index(keys)
        self._opened = True
        log.info(
            "Mongo store open: database %s (schema v%d, %s)",
            self.db_name,
            schema.SCHEMA_VERSION,
            self.write_concern,
        )

    async def _migrate(self) -> None:
        current = await self.schema_version()
        if current > schema.SCHEMA_VERSION:
            raise RuntimeError(
                f"database {self.db_name} has schema v{current}, newer than this code "
                f"(v{schema.SCHEMA_VERSION}): upgrade the bot instead of downgrading the database"
            )
        for migration in schema.MIGRATIONS:
            if migration.version <= current:
                continue
            log.info("Mongo store: migrating to v%d (%s)", migration.version, migration.description)
            await migration.apply(self.db)
            await self.meta.update_one(
                {"_id": schema.SCHEMA_KEY},
                {"$set": {"value": migration.version, "description": migration.description}},
                upsert=True,
            )

    async def schema_version(self) -> int:
        async with self._guard():
            doc = await self.meta.find_one({"_id": schema.SCHEMA_KEY})
        return int(doc["value"]) if doc else 0

    async def close(self) -> None:
        """Closes the client only if the store built it; an injected client stays usable."""
        self._opened = False
        if not self.owns_client or self._client_closed:
            return
        self._client_closed = True
        result = self.client.close()
        if inspect.isawaitable(result):  # PyMongo's AsyncMongoClient.close() is a coroutine
            await result

    async def ping(self) -> bool:
        try:
            await self.db.command("ping")
        except Exception:
            return False
        return True

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        try:
            yield
        except (ConnectionFailure, WriteConcernError) as exc:
            raise StoreUnavailable(
                "The database is unavailable right now (MongoDB unreachable or no majority); "
                "please try again shortly."
            ) from exc
        except InvalidOperation as exc:  # client closed
            raise StoreUnavailable("The database connection is closed.") from exc
        except PyMongoError as exc:
            if getattr(exc, "timeout", False):
                raise StoreUnavailable("The database timed out; please try again shortly.") from exc
            raise

    async def _aggregate(self, collection: Any, pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
        cursor = collection.aggregate(pipeline)
        if inspect.isawaitable(cursor):  # PyMongo async returns a coroutine, motor a cursor
            cursor = await cursor
        return await cursor.to_list(None)

    async def _find_jobs(
        self, query: dict[str, Any], sort: list[tuple[str, int]], limit: int = 0, skip: int = 0
    ) -> list[Job]:
        async with self._guard():
            cursor = self.jobs.find(query).sort(sort)
            if skip:
                cursor = cursor.skip(skip)
            if limit:
                cursor = cursor.limit(limit)
            docs = await cursor.to_list(None)
        return [job_from_doc(d) for d in docs]

    async def _modify_job(self, query: dict[str, Any], update: dict[str, Any]) -> Job | None:
        async with self._guard():
            doc = await self.jobs.find_one_and_update(query, update, return_document=ReturnDocument.AFTER)
        return job_from_doc(doc) if doc else None
