"""Moderation data in MongoDB: members (bans, quotas, usage), guild settings, the audit trail, the
small key/value collection, and the per-member deletion hook."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from pymongo import DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from bot.core.inputs import input_files
from bot.core.jobs import JobState
from bot.core.store.base import (
    AuditEntry,
    GuildSettings,
    UserRecord,
    check_guild_changes,
    remove_files,
    scrub_text,
)
from bot.core.store.mongo.connection import MongoConnection
from bot.core.store.mongo.documents import from_bson_time, to_bson_time, user_from_doc

log = logging.getLogger(__name__)


class MongoModeration(MongoConnection):
    """Users, guild settings, audit, meta and data deletion: each write one upsert or insert."""

    async def get_user(self, user_id: str) -> UserRecord:
        async with self._guard():
            doc = await self.users.find_one({"_id": user_id})
        return user_from_doc(user_id, doc)

    async def _upsert_user(self, user_id: str, update: dict[str, Any]) -> UserRecord:
        async with self._guard():
            doc = await self.users.find_one_and_update(
                {"_id": user_id}, update, upsert=True, return_document=ReturnDocument.AFTER
            )
        return user_from_doc(user_id, doc)

    async def set_ban(self, user_id: str, *, banned: bool, reason: str | None, by: str) -> UserRecord:
        fields: dict[str, Any] = (
            {
                "banned": True,
                "ban_reason": scrub_text(reason),
                "banned_by": by,
                "banned_at": to_bson_time(datetime.now(UTC)),
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

    async def add_audit(self, entry: AuditEntry) -> None:
        doc = scrub_text(entry.to_dict())
        doc["_id"] = doc.pop("id")
        doc["at"] = to_bson_time(entry.at)
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
            doc["at"] = from_bson_time(doc["at"])
            out.append(AuditEntry.from_dict(doc))
        return out

    async def get_meta(self, key: str) -> Any | None:
        async with self._guard():
            doc = await self.meta.find_one({"_id": key})
        return doc.get("value") if doc else None

    async def set_meta(self, key: str, value: Any) -> None:
        async with self._guard():
            await self.meta.update_one({"_id": key}, {"$set": {"value": scrub_text(value)}}, upsert=True)

    async def delete_user_data(self, user_id: str) -> int:
        query = {"user_id": user_id, "state": {"$ne": JobState.IN_PROGRESS.value}}
        async with self._guard():
            docs = await self.jobs.find(query, {"_id": 1, "result_path": 1, "params.image": 1}).to_list(None)
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
            await self.defaults.delete_many({"scope": {"$in": ["member", "preset"]}, "owner": user_id})
        paths = [d["result_path"] for d in docs if d.get("result_path")]
        paths += input_files((d.get("params") or {}).get("image") for d in docs)
        if paths:
            await asyncio.to_thread(remove_files, paths)
        log.info("deleted %d stored requests and %d files of user %s", deleted, len(paths), user_id)
        return deleted
