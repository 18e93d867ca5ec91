"""The MongoDB store, through an injected motor client.

Every motor call of the project lives in this module, and it uses only the API that motor and
PyMongo's own `AsyncMongoClient` share (collections, `find_one_and_update`, `insert_one`,
`update_one`, `delete_many`, `find().sort().limit().to_list()`, `create_index`, `command`;
`aggregate` through `_aggregate`, which awaits the cursor where PyMongo returns a coroutine), so
moving off motor (deprecated May 2025) is the one-line change in `make_client`.

Documents: a job is one document with `_id` = job id, times as BSON dates (naive UTC on the wire,
made aware on read), plus `seq`, an increasing number that orders jobs created in the same
millisecond. Users, guild settings and meta use the user/guild id or key as `_id`. Writes use the
configured write concern with `j=True`, so an acknowledged write is journaled.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument, WriteConcern
from pymongo.errors import (
    ConnectionFailure,
    DuplicateKeyError,
    InvalidOperation,
    PyMongoError,
    WriteConcernError,
)

from bot.core.jobs import Job, JobState
from bot.core.store.base import (
    FINAL_STATES,
    JOB_DATETIME_FIELDS,
    AuditEntry,
    GuildSettings,
    ModelStats,
    Store,
    StoreUnavailable,
    Usage,
    UserRecord,
    UserUsage,
    check_guild_changes,
    check_job_changes,
    remove_files,
    scrub_text,
    to_store_time,
)

log = logging.getLogger(__name__)

SCHEMA_KEY = "store.schema_version"
_FINAL = [s.value for s in FINAL_STATES]
_USER_FIELDS = (
    "banned",
    "ban_reason",
    "banned_by",
    "banned_at",
    "max_queued",
    "daily_gpu_seconds",
    "jobs_total",
    "gpu_seconds_total",
)


def make_client(url: str) -> Any:
    """The production client for `url` (motor today; `pymongo.AsyncMongoClient` is a drop-in)."""
    from motor.motor_asyncio import AsyncIOMotorClient

    options: dict[str, Any] = {"tz_aware": True}
    query = url.split("?", 1)[1].lower() if "?" in url else ""
    if "serverselectiontimeoutms" not in query:
        options["serverSelectionTimeoutMS"] = 5000  # fail fast instead of 30 s when the DB is down
    if "appname" not in query:
        options["appname"] = "imagine-bot"
    return AsyncIOMotorClient(url, **options)


def parse_write_concern(value: str | int) -> WriteConcern:
    """`majority` (default) or a node count; always journaled."""
    text = str(value).strip()
    w: str | int = int(text) if text.isdigit() else text
    return WriteConcern(w=w, j=True)


# --------------------------------------------------------------------------- migrations


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Any], Awaitable[None]]  # receives the database


async def _v1(db: Any) -> None:
    """Collections are created by the first write; the indexes are ensured at every open."""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "jobs/request log, users, guild settings, audit, meta", _v1),
)
SCHEMA_VERSION = MIGRATIONS[-1].version

INDEXES: dict[str, list[list[tuple[str, int]]]] = {
    "jobs": [
        [("user_id", ASCENDING), ("created_at", DESCENDING), ("seq", DESCENDING)],
        [("guild_id", ASCENDING), ("created_at", DESCENDING), ("seq", DESCENDING)],
        [("state", ASCENDING), ("created_at", ASCENDING), ("seq", ASCENDING)],
        [("state", ASCENDING), ("lease_expires_at", ASCENDING)],
        [("created_at", ASCENDING)],
    ],
    "audit": [
        [("at", DESCENDING), ("seq", DESCENDING)],
        [("guild_id", ASCENDING), ("at", DESCENDING)],
        [("actor_id", ASCENDING), ("at", DESCENDING)],
        [("target", ASCENDING), ("at", DESCENDING)],
    ],
}


# --------------------------------------------------------------------------- conversions


def _to_bson_time(value: datetime | None) -> datetime | None:
    """Naive UTC to the millisecond: what BSON stores, whatever the client's tz settings."""
    return None if value is None else to_store_time(value).replace(tzinfo=None)


def _from_bson_time(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _mongo_value(key: str, value: Any) -> Any:
    if key in JOB_DATETIME_FIELDS:
        return _to_bson_time(value)
    if isinstance(value, JobState):
        return value.value
    return scrub_text(value)


def _job_doc(job: Job, seq: int) -> dict[str, Any]:
    data = job.to_dict()
    doc = {key: _mongo_value(key, value) for key, value in data.items() if key != "id"}
    doc["_id"] = job.id
    doc["seq"] = seq
    return doc


def _job_from_doc(doc: Mapping[str, Any]) -> Job:
    data = dict(doc)
    data["id"] = data.pop("_id")
    data.pop("seq", None)
    for key in JOB_DATETIME_FIELDS:
        data[key] = _from_bson_time(data.get(key))
    return Job.from_dict(data)


def _user_from_doc(user_id: str, doc: Mapping[str, Any] | None) -> UserRecord:
    if not doc:
        return UserRecord(user_id=user_id)
    kw = {k: doc[k] for k in _USER_FIELDS if k in doc}
    if "banned_at" in kw:
        kw["banned_at"] = _from_bson_time(kw["banned_at"])
    return UserRecord(user_id=user_id, **kw)


class _Seq:
    """Increasing numbers to order records created in the same millisecond (time-based, so two
    processes writing the same database still interleave in roughly real order)."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, time.time_ns())
            return self._last


class MongoStore(Store):
    """Store in a MongoDB database; the client is built by the caller (see `make_client`)."""

    name = "mongo"

    def __init__(self, *, client: Any, db_name: str, write_concern: str | int = "majority") -> None:
        self.client = client
        self.db_name = db_name
        self.write_concern = parse_write_concern(write_concern)
        self.db = client.get_database(db_name, write_concern=self.write_concern)
        self.jobs = self.db.get_collection("jobs")
        self.users = self.db.get_collection("users")
        self.guilds = self.db.get_collection("guild_settings")
        self.audit = self.db.get_collection("audit")
        self.meta = self.db.get_collection("meta")
        self._seq = _Seq()
        self._opened = False

    # ----------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        if self._opened:
            return
        async with self._guard():
            await self._migrate()
            for collection, indexes in INDEXES.items():
                for keys in indexes:
                    await self.db.get_collection(collection).create_index(keys)
        self._opened = True
        log.info(
            "Mongo store open: database %s (schema v%d, %s)", self.db_name, SCHEMA_VERSION, self.write_concern
        )

    async def _migrate(self) -> None:
        current = await self.schema_version()
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"database {self.db_name} has schema v{current}, newer than this code "
                f"(v{SCHEMA_VERSION}): upgrade the bot instead of downgrading the database"
            )
        for migration in MIGRATIONS:
            if migration.version <= current:
                continue
            log.info("Mongo store: migrating to v%d (%s)", migration.version, migration.description)
            await migration.apply(self.db)
            await self.meta.update_one(
                {"_id": SCHEMA_KEY},
                {"$set": {"value": migration.version, "description": migration.description}},
                upsert=True,
            )

    async def schema_version(self) -> int:
        async with self._guard():
            doc = await self.meta.find_one({"_id": SCHEMA_KEY})
        return int(doc["value"]) if doc else 0

    async def close(self) -> None:
        """Closes the client too: the store owns it once handed in."""
        self._opened = False
        result = self.client.close()
        if inspect.isawaitable(result):  # PyMongo's AsyncMongoClient.close() is a coroutine
            await result

    async def ping(self) -> bool:
        try:
            await self.db.command("ping")
        except Exception:
            return False
        return True

    # ----------------------------------------------------------------- plumbing

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
        return [_job_from_doc(d) for d in docs]

    async def _modify_job(self, query: dict[str, Any], update: dict[str, Any]) -> Job | None:
        async with self._guard():
            doc = await self.jobs.find_one_and_update(query, update, return_document=ReturnDocument.AFTER)
        return _job_from_doc(doc) if doc else None

    # ----------------------------------------------------------------- jobs

    async def insert_job(self, job: Job) -> None:
        try:
            async with self._guard():
                await self.jobs.insert_one(_job_doc(job, self._seq.next()))
        except DuplicateKeyError as exc:
            raise ValueError(f"job {job.id} already exists") from exc

    async def get_job(self, job_id: str) -> Job | None:
        async with self._guard():
            doc = await self.jobs.find_one({"_id": job_id})
        return _job_from_doc(doc) if doc else None

    async def update_job(self, job_id: str, **changes: Any) -> Job | None:
        changes = check_job_changes(changes)
        if not changes:
            return await self.get_job(job_id)
        update = {"$set": {k: _mongo_value(k, v) for k, v in changes.items()}}
        return await self._modify_job({"_id": job_id}, update)

    async def claim_job(
        self, job_id: str, *, owner: str, lease_expires_at: datetime, now: datetime
    ) -> Job | None:
        return await self._modify_job(
            {"_id": job_id, "state": JobState.QUEUED.value, "cancel_requested": {"$ne": True}},
            {
                "$set": {
                    "state": JobState.IN_PROGRESS.value,
                    "started_at": _to_bson_time(now),
                    "lease_owner": owner,
                    "lease_expires_at": _to_bson_time(lease_expires_at),
                },
                "$inc": {"attempts": 1},
            },
        )

    async def renew_lease(self, job_id: str, *, owner: str, lease_expires_at: datetime) -> bool:
        async with self._guard():
            result = await self.jobs.update_one(
                {"_id": job_id, "state": JobState.IN_PROGRESS.value, "lease_owner": owner},
                {"$set": {"lease_expires_at": _to_bson_time(lease_expires_at)}},
            )
        return result.matched_count > 0

    async def finish_job(
        self, job_id: str, *, owner: str | None, state: JobState, **changes: Any
    ) -> Job | None:
        state = JobState(state)
        if not state.is_final:
            raise ValueError(f"finish_job needs a final state, not {state.value!r}")
        changes = check_job_changes(changes)
        changes.update(state=state, lease_owner=None, lease_expires_at=None)
        changes.setdefault("finished_at", datetime.now(UTC))
        query: dict[str, Any] = {"_id": job_id, "state": {"$nin": _FINAL}}
        if owner is not None:
            query["lease_owner"] = owner
        return await self._modify_job(query, {"$set": {k: _mongo_value(k, v) for k, v in changes.items()}})

    async def requeue_job(self, job_id: str, *, owner: str | None) -> Job | None:
        query: dict[str, Any] = {"_id": job_id, "state": JobState.IN_PROGRESS.value}
        if owner is not None:
            query["lease_owner"] = owner
        return await self._modify_job(
            query, {"$set": {"state": JobState.QUEUED.value, "lease_owner": None, "lease_expires_at": None}}
        )

    async def jobs_in_states(self, states: Iterable[JobState], *, limit: int | None = None) -> list[Job]:
        values = [JobState(s).value for s in states]
        if not values or limit == 0:
            return []
        return await self._find_jobs(
            {"state": {"$in": values}}, [("created_at", ASCENDING), ("seq", ASCENDING)], limit=limit or 0
        )

    async def count_in_states(self, states: Iterable[JobState]) -> dict[JobState, int]:
        counts = {JobState(s): 0 for s in states}
        if not counts:
            return counts
        async with self._guard():
            rows = await self._aggregate(
                self.jobs,
                [
                    {"$match": {"state": {"$in": [s.value for s in counts]}}},
                    {"$group": {"_id": "$state", "n": {"$sum": 1}}},
                ],
            )
        for row in rows:
            counts[JobState(row["_id"])] = int(row["n"])
        return counts

    async def expired_leases(self, now: datetime) -> list[Job]:
        return await self._find_jobs(
            {"state": JobState.IN_PROGRESS.value, "lease_expires_at": {"$lt": _to_bson_time(now)}},
            [("lease_expires_at", ASCENDING)],
        )

    # ----------------------------------------------------------------- request log queries

    async def user_history(self, user_id: str, *, limit: int = 10, offset: int = 0) -> list[Job]:
        if limit <= 0:
            return []
        return await self._find_jobs(
            {"user_id": user_id}, [("created_at", DESCENDING), ("seq", DESCENDING)], limit=limit, skip=offset
        )

    async def guild_recent(self, guild_id: str, *, limit: int = 20) -> list[Job]:
        if limit <= 0:
            return []
        return await self._find_jobs(
            {"guild_id": guild_id}, [("created_at", DESCENDING), ("seq", DESCENDING)], limit=limit
        )

    async def recent_results(self, *, limit: int = 24, guild_ids: Collection[str] | None = None) -> list[Job]:
        if limit <= 0:
            return []
        query: dict[str, Any] = {"state": JobState.COMPLETE.value}
        if guild_ids is not None:
            query["guild_id"] = {"$in": list(guild_ids)}
        return await self._find_jobs(query, [("created_at", DESCENDING), ("seq", DESCENDING)], limit=limit)

    async def user_usage(self, user_id: str, *, since: datetime) -> Usage:
        async with self._guard():
            rows = await self._aggregate(
                self.jobs,
                [
                    {"$match": {"user_id": user_id, "created_at": {"$gte": _to_bson_time(since)}}},
                    {"$group": {"_id": None, "jobs": {"$sum": 1}, "gpu": {"$sum": "$gpu_seconds"}}},
                ],
            )
        if not rows:
            return Usage()
        return Usage(jobs=int(rows[0]["jobs"]), gpu_seconds=float(rows[0]["gpu"] or 0.0))

    async def model_stats(self, *, since: datetime | None = None) -> list[ModelStats]:
        pipeline: list[dict[str, Any]] = []
        if since is not None:
            pipeline.append({"$match": {"created_at": {"$gte": _to_bson_time(since)}}})

        def count(state: JobState) -> dict[str, Any]:
            return {"$sum": {"$cond": [{"$eq": ["$state", state.value]}, 1, 0]}}

        pipeline.append(
            {
                "$group": {
                    "_id": {"model": "$model", "kind": "$kind"},
                    "jobs": {"$sum": 1},
                    "complete": count(JobState.COMPLETE),
                    "failed": count(JobState.FAILED),
                    "cancelled": count(JobState.CANCELLED),
                    "gpu_total": {"$sum": "$gpu_seconds"},
                    "gpu_avg": {"$avg": "$gpu_seconds"},
                }
            }
        )
        async with self._guard():
            rows = await self._aggregate(self.jobs, pipeline)
        stats = [
            ModelStats(
                model=r["_id"]["model"],
                kind=r["_id"]["kind"],
                jobs=int(r["jobs"]),
                complete=int(r["complete"]),
                failed=int(r["failed"]),
                cancelled=int(r["cancelled"]),
                gpu_seconds_total=float(r["gpu_total"] or 0.0),
                gpu_seconds_avg=float(r["gpu_avg"] or 0.0),
            )
            for r in rows
        ]
        return sorted(stats, key=lambda s: (s.model, s.kind))

    async def top_users(
        self, *, since: datetime, limit: int = 10, guild_id: str | None = None
    ) -> list[UserUsage]:
        if limit <= 0:
            return []
        match: dict[str, Any] = {"created_at": {"$gte": _to_bson_time(since)}}
        if guild_id is not None:
            match["guild_id"] = guild_id
        pipeline = [
            {"$match": match},
            {"$group": {"_id": "$user_id", "jobs": {"$sum": 1}, "gpu": {"$sum": "$gpu_seconds"}}},
            {"$sort": {"gpu": DESCENDING, "jobs": DESCENDING, "_id": ASCENDING}},
            {"$limit": limit},
        ]
        async with self._guard():
            rows = await self._aggregate(self.jobs, pipeline)
        return [
            UserUsage(user_id=r["_id"], jobs=int(r["jobs"]), gpu_seconds=float(r["gpu"] or 0.0)) for r in rows
        ]

    # ----------------------------------------------------------------- users

    async def get_user(self, user_id: str) -> UserRecord:
        async with self._guard():
            doc = await self.users.find_one({"_id": user_id})
        return _user_from_doc(user_id, doc)

    async def _upsert_user(self, user_id: str, update: dict[str, Any]) -> UserRecord:
        async with self._guard():
            doc = await self.users.find_one_and_update(
                {"_id": user_id}, update, upsert=True, return_document=ReturnDocument.AFTER
            )
        return _user_from_doc(user_id, doc)

    async def set_ban(self, user_id: str, *, banned: bool, reason: str | None, by: str) -> UserRecord:
        fields: dict[str, Any] = (
            {
                "banned": True,
                "ban_reason": scrub_text(reason),
                "banned_by": by,
                "banned_at": _to_bson_time(datetime.now(UTC)),
            }
            if banned
            else {"banned": False, "ban_reason": None, "banned_by": None, "banned_at": None}
        )
        return await self._upsert_user(user_id, {"$set": fields})

    async def set_user_quota(
        self, user_id: str, *, max_queued: int | None, daily_gpu_seconds: float | None
    ) -> UserRecord:
        return await self._upsert_user(
            user_id, {"$set": {"max_queued": max_queued, "daily_gpu_seconds": daily_gpu_seconds}}
        )

    async def add_usage(self, user_id: str, *, jobs: int = 0, gpu_seconds: float = 0.0) -> None:
        async with self._guard():
            await self.users.update_one(
                {"_id": user_id},
                {"$inc": {"jobs_total": int(jobs), "gpu_seconds_total": float(gpu_seconds)}},
                upsert=True,
            )

    # ----------------------------------------------------------------- guild settings

    async def get_guild_settings(self, guild_id: str) -> GuildSettings:
        async with self._guard():
            doc = await self.guilds.find_one({"_id": guild_id})
        return GuildSettings.from_dict({**(doc or {}), "guild_id": guild_id})

    async def update_guild_settings(self, guild_id: str, **changes: Any) -> GuildSettings:
        changes = check_guild_changes(changes)
        if not changes:
            return await self.get_guild_settings(guild_id)
        async with self._guard():
            doc = await self.guilds.find_one_and_update(
                {"_id": guild_id},
                {"$set": scrub_text(changes)},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        return GuildSettings.from_dict({**doc, "guild_id": guild_id})

    # ----------------------------------------------------------------- audit

    async def add_audit(self, entry: AuditEntry) -> None:
        doc = scrub_text(entry.to_dict())
        doc["_id"] = doc.pop("id")
        doc["at"] = _to_bson_time(entry.at)
        doc["seq"] = self._seq.next()
        try:
            async with self._guard():
                await self.audit.insert_one(doc)
        except DuplicateKeyError as exc:
            raise ValueError(f"audit entry {entry.id} already exists") from exc

    async def list_audit(
        self,
        *,
        guild_id: str | None = None,
        actor_id: str | None = None,
        target: str | None = None,
        limit: int = 50,
    ) -> list[AuditEntry]:
        if limit <= 0:
            return []
        query = {
            k: v
            for k, v in (("guild_id", guild_id), ("actor_id", actor_id), ("target", target))
            if v is not None
        }
        async with self._guard():
            docs = (
                await self.audit.find(query)
                .sort([("at", DESCENDING), ("seq", DESCENDING)])
                .limit(limit)
                .to_list(None)
            )
        out = []
        for doc in docs:
            doc["id"] = doc.pop("_id")
            doc["at"] = _from_bson_time(doc["at"])
            out.append(AuditEntry.from_dict(doc))
        return out

    # ----------------------------------------------------------------- meta

    async def get_meta(self, key: str) -> Any | None:
        async with self._guard():
            doc = await self.meta.find_one({"_id": key})
        return doc.get("value") if doc else None

    async def set_meta(self, key: str, value: Any) -> None:
        async with self._guard():
            await self.meta.update_one({"_id": key}, {"$set": {"value": scrub_text(value)}}, upsert=True)

    # ----------------------------------------------------------------- privacy

    async def delete_user_data(self, user_id: str) -> int:
        query = {"user_id": user_id, "state": {"$ne": JobState.IN_PROGRESS.value}}
        async with self._guard():
            docs = await self.jobs.find(query, {"_id": 1, "result_path": 1}).to_list(None)
            ids = [d["_id"] for d in docs]
            deleted = 0
            if ids:
                # delete exactly the ids read: a job claimed in between is running now and stays
                result = await self.jobs.delete_many(
                    {"_id": {"$in": ids}, "state": {"$ne": JobState.IN_PROGRESS.value}}
                )
                deleted = result.deleted_count
            await self.users.update_one(
                {"_id": user_id}, {"$set": {"jobs_total": 0, "gpu_seconds_total": 0.0}}
            )
        paths = [d["result_path"] for d in docs if d.get("result_path")]
        if paths:
            await asyncio.to_thread(remove_files, paths)
        log.info("deleted %d stored requests and %d files of user %s", deleted, len(paths), user_id)
        return deleted
