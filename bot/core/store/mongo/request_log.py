"""Request-log queries in MongoDB: finds on the (field, created_at, seq) indexes, aggregations for
the statistics; ties in creation time broken by `seq`."""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING

from bot.core.jobs import Job, JobState
from bot.core.store.base import TROUBLE_STATES, ModelStats, Usage, UserUsage
from bot.core.store.mongo.connection import MongoConnection
from bot.core.store.mongo.documents import to_bson_time

log = logging.getLogger(__name__)

NEWEST_FIRST = [("created_at", DESCENDING), ("seq", DESCENDING)]
#: answered from the (state, finished_at, seq) index: one merged index walk over the two states
LATEST_FINISHED_FIRST = [("finished_at", DESCENDING), ("seq", DESCENDING)]
TROUBLE = [s.value for s in TROUBLE_STATES]


def _count(state: JobState) -> dict[str, Any]:
    return {"$sum": {"$cond": [{"$eq": ["$state", state.value]}, 1, 0]}}


class MongoRequestLog(MongoConnection):
    """Histories, recent results and usage statistics."""

    async def user_history(self, user_id: str, *, limit: int = 10, offset: int = 0) -> list[Job]:
        if limit <= 0:
            return []
        return await self._find_jobs({"user_id": user_id}, NEWEST_FIRST, limit=limit, skip=offset)

    async def guild_recent(self, guild_id: str, *, limit: int = 20) -> list[Job]:
        if limit <= 0:
            return []
        return await self._find_jobs({"guild_id": guild_id}, NEWEST_FIRST, limit=limit)

    async def recent_results(self, *, limit: int = 24, guild_ids: Collection[str] | None = None) -> list[Job]:
        if limit <= 0:
            return []
        query: dict[str, Any] = {"state": JobState.COMPLETE.value}
        if guild_ids is not None:
            query["guild_id"] = {"$in": list(guild_ids)}
        return await self._find_jobs(query, NEWEST_FIRST, limit=limit)

    async def recent_trouble(self, *, since: datetime, limit: int = 20) -> list[Job]:
        if limit <= 0:
            return []
        query: dict[str, Any] = {"state": {"$in": TROUBLE}, "finished_at": {"$gte": to_bson_time(since)}}
        return await self._find_jobs(query, LATEST_FINISHED_FIRST, limit=limit)

    async def user_usage(self, user_id: str, *, since: datetime) -> Usage:
        async with self._guard():
            rows = await self._aggregate(
                self.jobs,
                [
                    {"$match": {"user_id": user_id, "created_at": {"$gte": to_bson_time(since)}}},
                    {"$group": {"_id": None, "jobs": {"$sum": 1}, "gpu": {"$sum": "$gpu_seconds"}}},
                ],
            )
        if not rows:
            return Usage()
        return Usage(jobs=int(rows[0]["jobs"]), gpu_seconds=float(rows[0]["gpu"] or 0.0))

    async def model_stats(self, *, since: datetime | None = None) -> list[ModelStats]:
        pipeline: list[dict[str, Any]] = []
        if since is not None:
            pipeline.append({"$match": {"created_at": {"$gte": to_bson_time(since)}}})
        pipeline.append(
            {
                "$group": {
                    "_id": {"model": "$model", "kind": "$kind"},
                    "jobs": {"$sum": 1},
                    "complete": _count(JobState.COMPLETE),
                    "failed": _count(JobState.FAILED),
                    "cancelled": _count(JobState.CANCELLED),
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
        match: dict[str, Any] = {"created_at": {"$gte": to_bson_time(since)}}
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
