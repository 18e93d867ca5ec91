"""Moderation data in SQLite: members (bans, quotas, usage), guild settings, the audit trail, the
small key/value table, and the per-member deletion hook."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Any

from bot.core.inputs import input_files
from bot.core.store.base import (
    AuditEntry,
    GuildSettings,
    UserRecord,
    check_guild_changes,
    remove_files,
    scrub_text,
)
from bot.core.store.sqlite.connection import SQLiteConnection
from bot.core.store.sqlite.rows import USER_SELECT, dumps, from_ms, to_ms, user_from_row

log = logging.getLogger(__name__)


class SQLiteModeration(SQLiteConnection):
    """Users, guild settings, audit, meta and data deletion: each write one upsert statement."""

    async def get_user(self, user_id: str) -> UserRecord:
        rows = await self._fetch(f"SELECT {USER_SELECT} FROM users WHERE user_id = ?", (user_id,))
        return user_from_row(rows[0]) if rows else UserRecord(user_id=user_id)

    async def set_ban(self, user_id: str, *, banned: bool, reason: str | None, by: str) -> UserRecord:
        values = (
            (user_id, 1, scrub_text(reason), by, to_ms(datetime.now(UTC)))
            if banned
            else (user_id, 0, None, None, None)
        )
        rows = await self._fetch(
            "INSERT INTO users (user_id, banned, ban_reason, banned_by, banned_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET banned = excluded.banned, ban_reason = excluded.ban_reason, "
            f"banned_by = excluded.banned_by, banned_at = excluded.banned_at RETURNING {USER_SELECT}",
            values,
        )
        return user_from_row(rows[0])

    async def set_user_quota(
        self, user_id: str, *, max_queued: int | None, daily_gpu_seconds: float | None
    ) -> UserRecord:
        rows = await self._fetch(
            "INSERT INTO users (user_id, max_queued, daily_gpu_seconds) VALUES (?, ?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET max_queued = excluded.max_queued, "
            f"daily_gpu_seconds = excluded.daily_gpu_seconds RETURNING {USER_SELECT}",
            (user_id, max_queued, daily_gpu_seconds),
        )
        return user_from_row(rows[0])

    async def add_usage(self, user_id: str, *, jobs: int = 0, gpu_seconds: float = 0.0) -> None:
        await self._fetch(
            "INSERT INTO users (user_id, jobs_total, gpu_seconds_total) VALUES (?, ?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET jobs_total = jobs_total + excluded.jobs_total, "
            "gpu_seconds_total = gpu_seconds_total + excluded.gpu_seconds_total",
            (user_id, int(jobs), float(gpu_seconds)),
        )

    async def get_guild_settings(self, guild_id: str) -> GuildSettings:
        rows = await self._fetch("SELECT data FROM guild_settings WHERE guild_id = ?", (guild_id,))
        data = json.loads(rows[0][0]) if rows else {}
        return GuildSettings.from_dict({**data, "guild_id": guild_id})

    async def update_guild_settings(self, guild_id: str, **changes: Any) -> GuildSettings:
        changes = check_guild_changes(changes)
        if not changes:
            return await self.get_guild_settings(guild_id)
        paths = ", ".join(f"'$.{key}', json(?)" for key in changes)  # validated field names
        rows = await self._fetch(
            "INSERT INTO guild_settings (guild_id, data) VALUES (?, ?) "
            f"ON CONFLICT (guild_id) DO UPDATE SET data = json_set(data, {paths}) RETURNING data",
            (guild_id, dumps(changes), *(dumps(v) for v in changes.values())),
        )
        return GuildSettings.from_dict({**json.loads(rows[0][0]), "guild_id": guild_id})

    async def add_audit(self, entry: AuditEntry) -> None:
        data = entry.to_dict()
        data["at"] = to_ms(entry.at)
        await self._fetch(
            "INSERT INTO audit (id, at, actor_id, guild_id, target, data) VALUES (?, ?, ?, ?, ?, ?)",
            (entry.id, data["at"], entry.actor_id, entry.guild_id, scrub_text(entry.target), dumps(data)),
        )

    async def list_audit(
        self,
        *,
        guild_id: str | None = None,
        actor_id: str | None = None,
        target: str | None = None,
        limit: int = 50,
    ) -> list[AuditEntry]:
        conds: list[str] = []
        params: list[Any] = []
        for column, value in (("guild_id", guild_id), ("actor_id", actor_id), ("target", target)):
            if value is not None:
                conds.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(conds)}" if conds else ""
        rows = await self._fetch(
            f"SELECT data FROM audit {where} ORDER BY at DESC, rowid DESC LIMIT ?", (*params, limit)
        )
        out = []
        for (raw,) in rows:
            data = json.loads(raw)
            data["at"] = from_ms(data["at"])
            out.append(AuditEntry.from_dict(data))
        return out

    async def get_meta(self, key: str) -> Any | None:
        rows = await self._fetch("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    async def set_meta(self, key: str, value: Any) -> None:
        await self._fetch(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, dumps(value)),
        )

    async def delete_user_data(self, user_id: str) -> int:
        rows = await self._fetch(
            "DELETE FROM jobs WHERE user_id = ? AND state != 'in_progress' "
            "RETURNING json_extract(data, '$.result_path'), json_extract(data, '$.params.image')",
            (user_id,),
        )
        await self._fetch(
            "UPDATE users SET jobs_total = 0, gpu_seconds_total = 0 WHERE user_id = ?", (user_id,)
        )
        await self._fetch(
            "DELETE FROM defaults WHERE scope IN ('member', 'preset') AND owner = ?", (user_id,)
        )
        paths = [p for (p, _) in rows if p] + input_files(image for (_, image) in rows)
        if paths:
            await asyncio.to_thread(remove_files, paths)
        log.info("deleted %d stored requests and %d files of user %s", len(rows), len(paths), user_id)
        return len(rows)
