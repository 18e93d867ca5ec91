"""Bulk export and import of every collection in MongoDB, for `python -m bot.store migrate`.

Import replaces by `_id` (so a second run changes nothing): per batch, one `delete_many` of the
ids and one ordered `insert_many`. Jobs and audit entries get fresh `seq` numbers in the order given,
which keeps the order of records created in the same millisecond.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any

from pymongo import ASCENDING

from bot.core.jobs import Job
from bot.core.store.base import AuditEntry, UserRecord, check_collection, scrub_text
from bot.core.store.mongo.connection import MongoConnection
from bot.core.store.mongo.defaults import defaults_id
from bot.core.store.mongo.documents import (
    from_bson_time,
    job_doc,
    job_from_doc,
    to_bson_time,
    user_from_doc,
)
from bot.core.store.mongo.schema import SCHEMA_KEY

log = logging.getLogger(__name__)

_SORT: dict[str, list[tuple[str, int]]] = {
    "jobs": [("created_at", ASCENDING), ("seq", ASCENDING)],
    "users": [("_id", ASCENDING)],
    "guild_settings": [("_id", ASCENDING)],
    "audit": [("at", ASCENDING), ("seq", ASCENDING)],
    "meta": [("_id", ASCENDING)],
    "defaults": [("_id", ASCENDING)],
}
#: the driver's own bookkeeping in `meta`, not a record (the target records its own version)
_NOT_RECORDS: dict[str, dict[str, Any]] = {"meta": {"_id": {"$ne": SCHEMA_KEY}}}
_USER_FIELDS = tuple(f.name for f in fields(UserRecord) if f.name != "user_id")


def _record(collection: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    if collection == "jobs":
        return job_from_doc(doc).to_dict()
    if collection == "users":
        return asdict(user_from_doc(doc["_id"], doc))
    if collection == "guild_settings":
        return {"guild_id": doc["_id"], **{k: v for k, v in doc.items() if k != "_id"}}
    if collection == "audit":
        data = {k: v for k, v in doc.items() if k not in ("_id", "seq")}
        data["id"] = doc["_id"]
        data["at"] = from_bson_time(data["at"])
        return AuditEntry.from_dict(data).to_dict()
    if collection == "defaults":
        record = {k: doc[k] for k in ("scope", "owner", "name", "values")}
        return {**record, "updated_at": from_bson_time(doc["updated_at"])}
    return {"key": doc["_id"], "value": doc.get("value")}


class MongoBulk(MongoConnection):
    """`count_records`, `export_records` and `import_records` over every collection."""

    def _collection(self, collection: str) -> Any:
        name = check_collection(collection)
        return self.guilds if name == "guild_settings" else getattr(self, name)

    async def count_records(self, collection: str) -> int:
        async with self._guard():
            return int(await self._collection(collection).count_documents(_NOT_RECORDS.get(collection, {})))

    async def export_records(
        self, collection: str, *, batch_size: int = 500
    ) -> AsyncIterator[list[dict[str, Any]]]:
        cursor = self._collection(collection).find(_NOT_RECORDS.get(collection, {})).sort(_SORT[collection])
        batch: list[dict[str, Any]] = []
        try:
            async with self._guard():
                async for doc in cursor:
                    batch.append(_record(collection, doc))
                    if len(batch) >= batch_size:
                        yield batch
                        batch = []
        finally:
            await cursor.close()  # at once, also when the copy stops midway
        if batch:
            yield batch

    def _document(self, collection: str, record: dict[str, Any]) -> dict[str, Any]:
        if collection == "jobs":
            return job_doc(Job.from_dict(record), self._seq.next())
        if collection == "users":
            user = UserRecord(**record)
            doc = {k: getattr(user, k) for k in _USER_FIELDS}
            doc["banned_at"] = to_bson_time(user.banned_at)
            return {"_id": user.user_id, **scrub_text(doc)}
        if collection == "guild_settings":
            return {
                "_id": record["guild_id"],
                **scrub_text({k: v for k, v in record.items() if k != "guild_id"}),
            }
        if collection == "audit":
            entry = AuditEntry.from_dict(record)
            doc = scrub_text(entry.to_dict())
            doc["_id"] = doc.pop("id")
            doc["at"] = to_bson_time(entry.at)
            doc["seq"] = self._seq.next()
            return doc
        if collection == "defaults":
            name = record.get("name") or ""
            return {
                "_id": defaults_id(record["scope"], record["owner"], name),
                **scrub_text({k: record[k] for k in ("scope", "owner", "values")}),
                "name": name,
                "updated_at": to_bson_time(record["updated_at"]),
            }
        return {"_id": record["key"], "value": scrub_text(record["value"])}

    async def import_records(self, collection: str, records: Sequence[dict[str, Any]]) -> None:
        target = self._collection(collection)
        docs = [self._document(collection, record) for record in records]
        if not docs:
            return
        async with self._guard():
            # replace = delete what exists + insert in order: two round trips per batch, and the
            # same calls on motor, PyMongo's async client and mongomock (whose bulk ReplaceOne
            # fails on current PyMongo)
            await target.delete_many({"_id": {"$in": [doc["_id"] for doc in docs]}})
            await target.insert_many(docs, ordered=True)
