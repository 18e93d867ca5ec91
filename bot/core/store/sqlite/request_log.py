"""Request-log queries in SQLite: each one answered from an index (tests/store/test_sqlite.py checks
the query plans), ties in creation time broken by insertion order (`rowid`)."""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import datetime
from typing import Any

from bot.core.jobs import Job
from bot.core.store.base import ModelStats, Usage, UserUsage
from bot.core.store.sqlite.connection import SQLiteConnection
from bot.core.store.sqlite.rows import SELECT, to_ms
from bot.core.store.sqlite.schema import TROUBLE_WHERE

log = logging.getLogger(__name__)


class SQLiteRequestLog(SQLiteConnection):
    """Histories, recent results and usage statistics."""

    async def user_history(self, user_id: str, *, limit: int = 10, offset: int = 0) -> list[Job]:
        return await self._fetch_jobs(
            f"SELECT {SELECT} FROM jobs WHERE user_id = ? "
            "ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
            (user_id, limit, offset),
        )

    async def guild_recent(self, guild_id: str, *, limit: int = 20) -> list[Job]:
        return await self._fetch_jobs(
            f"SELECT {SELECT} FROM jobs WHERE guild_id = ? ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (guild_id, limit),
        )

    async def recent_results(self, *, limit: int = 24, guild_ids: Collection[str] | None = None) -> list[Job]:
        where = "state = 'complete'"
        params: list[Any] = []
        if guild_ids is not None:
            guilds = list(guild_ids)
            if not guilds:
                return []
            where += f" AND guild_id IN ({', '.join('?' * len(guilds))})"
            params.extend(guilds)
        return await self._fetch_jobs(
            f"SELECT {SELECT} FROM jobs WHERE {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (*params, limit),
        )

    async def recent_trouble(self, *, since: datetime, limit: int = 20) -> list[Job]:
        if limit <= 0:  # SQLite reads a negative LIMIT as none at all
            return []
        return await self._fetch_jobs(
            f"SELECT {SELECT} FROM jobs INDEXED BY jobs_trouble_finished WHERE {TROUBLE_WHERE} "
            "AND finished_at >= ? "
            "ORDER BY finished_at DESC, rowid DESC LIMIT ?",
            (to_ms(since), limit),
        )

    async def user_usage(self, user_id: str, *, since: datetime) -> Usage:
        rows = await self._fetch(
            "SELECT COUNT(*), COALESCE(SUM(gpu_seconds), 0.0) FROM jobs "
            "WHERE user_id = ? AND created_at >= ?",
            (user_id, to_ms(since)),
        )
        return Usage(jobs=rows[0][0], gpu_seconds=float(rows[0][1]))

    async def model_stats(self, *, since: datetime | None = None) -> list[ModelStats]:
        where, params = ("WHERE created_at >= ?", (to_ms(since),)) if since is not None else ("", ())
        rows = await self._fetch(
            "SELECT model, kind, COUNT(*), SUM(state = 'complete'), SUM(state = 'failed'), "
            "SUM(state = 'cancelled'), COALESCE(SUM(gpu_seconds), 0.0), AVG(gpu_seconds) "
            f"FROM jobs {where} GROUP BY model, kind ORDER BY model, kind",
            params,
        )
        return [
            ModelStats(
                model=r[0],
                kind=r[1],
                jobs=r[2],
                complete=r[3],
                failed=r[4],
                cancelled=r[5],
                gpu_seconds_total=float(r[6]),
                gpu_seconds_avg=float(r[7] or 0.0),
            )
            for r in rows
        ]

    async def top_users(
        self, *, since: datetime, limit: int = 10, guild_id: str | None = None
    ) -> list[UserUsage]:
        where, params = "created_at >= ?", [to_ms(since)]
        if guild_id is not None:
            where += " AND guild_id = ?"
            params.append(guild_id)
        rows = await self._fetch(
            "SELECT user_id, COUNT(*) AS jobs, COALESCE(SUM(gpu_seconds), 0.0) AS gpu FROM jobs "
            f"WHERE {where} GROUP BY user_id ORDER BY gpu DESC, jobs DESC, user_id LIMIT ?",
            (*params, limit),
        )
        return [UserUsage(user_id=r[0], jobs=r[1], gpu_seconds=float(r[2])) for r in rows]
