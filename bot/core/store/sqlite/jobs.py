"""Queue state in SQLite: each operation is one `UPDATE … RETURNING`, atomic across processes.

SQLite's write lock makes the `WHERE` of a claim or a finish a compare-and-set, and `busy_timeout`
makes a second writer wait instead of failing.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from bot.core.jobs import Job, JobState
from bot.core.store.base import check_job_changes, finish_changes
from bot.core.store.sqlite.connection import SQLiteConnection
from bot.core.store.sqlite.rows import FINAL, INSERT_JOB, SELECT, job_row, set_clause, to_ms

log = logging.getLogger(__name__)


class SQLiteJobs(SQLiteConnection):
    """Insert, claim, lease, finish and requeue jobs."""

    async def insert_job(self, job: Job) -> None:
        try:
            await self._fetch(INSERT_JOB, job_row(job))
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"job {job.id} already exists") from exc

    async def get_job(self, job_id: str) -> Job | None:
        return await self._fetch_job(f"SELECT {SELECT} FROM jobs WHERE id = ?", (job_id,))

    async def update_job(self, job_id: str, **changes: Any) -> Job | None:
        changes = check_job_changes(changes)
        if not changes:
            return await self.get_job(job_id)
        clause, params = set_clause(changes)
        return await self._fetch_job(
            f"UPDATE jobs SET {clause} WHERE id = ? RETURNING {SELECT}", (*params, job_id)
        )

    async def claim_job(
        self, job_id: str, *, owner: str, lease_expires_at: datetime, now: datetime
    ) -> Job | None:
        return await self._fetch_job(
            "UPDATE jobs SET state = 'in_progress', attempts = attempts + 1, started_at = ?, "
            "lease_owner = ?, lease_expires_at = ? "
            f"WHERE id = ? AND state = 'queued' AND cancel_requested = 0 RETURNING {SELECT}",
            (to_ms(now), owner, to_ms(lease_expires_at), job_id),
        )

    async def renew_lease(self, job_id: str, *, owner: str, lease_expires_at: datetime) -> bool:
        rows = await self._fetch(
            "UPDATE jobs SET lease_expires_at = ? "
            "WHERE id = ? AND state = 'in_progress' AND lease_owner = ? RETURNING id",
            (to_ms(lease_expires_at), job_id, owner),
        )
        return bool(rows)

    async def finish_job(
        self, job_id: str, *, owner: str | None, state: JobState, **changes: Any
    ) -> Job | None:
        changes = finish_changes(state, changes)
        clause, params = set_clause(changes)
        where = "id = ? AND state NOT IN (?, ?, ?)"
        args: list[Any] = [*params, job_id, *FINAL]
        if owner is not None:
            where += " AND lease_owner = ?"
            args.append(owner)
        return await self._fetch_job(f"UPDATE jobs SET {clause} WHERE {where} RETURNING {SELECT}", args)

    async def requeue_job(self, job_id: str, *, owner: str | None) -> Job | None:
        where = "id = ? AND state = 'in_progress'"
        args: list[Any] = [job_id]
        if owner is not None:
            where += " AND lease_owner = ?"
            args.append(owner)
        return await self._fetch_job(
            "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL "
            f"WHERE {where} RETURNING {SELECT}",
            args,
        )

    async def jobs_in_states(self, states: Iterable[JobState], *, limit: int | None = None) -> list[Job]:
        values = [JobState(s).value for s in states]
        if not values:
            return []
        marks = ", ".join("?" * len(values))
        return await self._fetch_jobs(
            f"SELECT {SELECT} FROM jobs WHERE state IN ({marks}) ORDER BY created_at, rowid LIMIT ?",
            (*values, -1 if limit is None else limit),
        )

    async def count_in_states(self, states: Iterable[JobState]) -> dict[JobState, int]:
        counts = {JobState(s): 0 for s in states}
        if not counts:
            return counts
        marks = ", ".join("?" * len(counts))
        rows = await self._fetch(
            f"SELECT state, COUNT(*) FROM jobs WHERE state IN ({marks}) GROUP BY state",
            [s.value for s in counts],
        )
        for state, n in rows:
            counts[JobState(state)] = n
        return counts

    async def expired_leases(self, now: datetime) -> list[Job]:
        return await self._fetch_jobs(
            f"SELECT {SELECT} FROM jobs WHERE state = 'in_progress' AND lease_expires_at < ? "
            "ORDER BY lease_expires_at",
            (to_ms(now),),
        )
