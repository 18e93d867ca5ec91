"""Saved request defaults in SQLite: one row per (scope, owner, name), the values as JSON."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from bot.core.store.sqlite.connection import SQLiteConnection
from bot.core.store.sqlite.rows import dumps, to_ms

log = logging.getLogger(__name__)


class SQLiteDefaults(SQLiteConnection):
    """Member, channel and guild defaults and members' presets (bot.core.defaults)."""

    async def get_defaults(self, scope: str, owner: str, name: str = "") -> dict[str, Any] | None:
        rows = await self._fetch(
            "SELECT data FROM defaults WHERE scope = ? AND owner = ? AND name = ?", (scope, owner, name)
        )
        return json.loads(rows[0][0]) if rows else None

    async def set_defaults(self, scope: str, owner: str, values: dict[str, Any], name: str = "") -> None:
        await self._fetch(
            "INSERT INTO defaults (scope, owner, name, data, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (scope, owner, name) DO UPDATE SET data = excluded.data, "
            "updated_at = excluded.updated_at",
            (scope, owner, name, dumps(values), to_ms(datetime.now(UTC))),
        )

    async def delete_defaults(self, scope: str, owner: str, name: str = "") -> bool:
        rows = await self._fetch(
            "DELETE FROM defaults WHERE scope = ? AND owner = ? AND name = ? RETURNING name",
            (scope, owner, name),
        )
        return bool(rows)

    async def list_defaults(self, scope: str, owner: str) -> dict[str, dict[str, Any]]:
        rows = await self._fetch(
            "SELECT name, data FROM defaults WHERE scope = ? AND owner = ? ORDER BY name", (scope, owner)
        )
        return {name: json.loads(data) for name, data in rows}
