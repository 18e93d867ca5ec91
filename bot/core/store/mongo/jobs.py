"""Queue state in MongoDB: each operation is one `find_one_and_update` whose filter is the
compare-and-set, atomic on the server."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError

from bot.core.jobs import Job, JobState
from bot.core.store.base import check_job_changes, finish_changes
from bot.core.store.mongo.connection import MongoConnection
from bot.core.store.mongo.documents import FINAL, job_doc, job_from_doc, mongo_value, to_bson_time

log = logging.getLogger(__name__)


class MongoJobs(MongoConnection):
    """Insert, claim, lease, finish and requeue jobs."""

    async def insert_job(self, job: Job) -> None:
        try:
            async with self._guard():
                await self.jobs.insert_one(job_doc(job, self._seq.next()))
        except DuplicateKeyError as exc:
            raise ValueError(f"job {job.id} already exists") from exc

    async def get_job(self, job_id: str) -> Job | None:
        async with self._guard():
            doc = await self.jobs.find_one({"_id": job_id})
        return job_from_doc(doc) if doc else None

    async def update_job(self, job_id: str, **changes: Any) -> Job | None:
        changes = check_job_changes(changes)
        if not changes:
            return await self.get_job(job_id)
        update = {"$set": {k: mongo_value(k, v) for k, v in changes.items()}}
        return await self._modify_job({"_id": job_id}, update)

    async def claim_job(
        self, job_id: str, *, owner: str, lease_expires_at: datetime, now: datetime
    ) -> Job | None:
        return await self._modify_job(
            {"_id": job_id, "state": JobState.QUEUED.value, "cancel_requested": {"$ne": True}},
            {
                "$set": {
                    "state": JobState.IN_PROGRESS.value,
                    "started_at": to_bson_time(now),
                    "lease_owner": owner,
                    "lease_expires_at": to_bson_time(lease_expires_at),
                },
                "$inc": {"attempts": 1},
            },
        )

    async def renew_lease(self, job_id: str, *, owner: str, lease_expires_at: datetime) -> bool:
        async with self._guard():
            result = await self.jobs.update_one(
                {"_id": job_id, "state": JobState.IN_PROGRESS.value, "lease_owner": owner},
                {"$set": {"lease_expires_at": to_bson_time(lease_expires_at)}},
            )
        return result.matched_count > 0

    async def finish_job(
        self, job_id: str, *, owner: str | None, state: JobState, **changes: Any
    ) -> Job | None:
        changes = finish_changes(state, changes)
        query: dict[str, Any] = {"_id": job_id, "state": {"$nin": FINAL}}
        if owner is not None:
            query["lease_owner"] = owner
        return await self._modify_job(query, {"$set": {k: mongo_value(k, v) for k, v in changes.items()}})

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
            {"state": JobState.IN_PROGRESS.value, "lease_expires_at": {"$lt": to_bson_time(now)}},
            [("lease_expires_at", ASCENDING)],
        )
