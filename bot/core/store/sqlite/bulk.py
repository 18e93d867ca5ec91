"""Bulk export and import of every table in SQLite, for `python -m bot.store migrate`.

Export reads with one cursor per table (WAL keeps that snapshot consistent while it runs); import
upserts a batch inside one transaction, so a batch costs one fsync rather than one per row, and an
upsert keeps an existing row's `rowid` (the tie-break of equal times).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict
from typing import Any

from bot.core.jobs import Job
from bot.core.store.base import AuditEntry, StoreUnavailable, UserRecord, check_collection, scrub_text
from bot.core.store.sqlite.connection import SQLiteConnection
from bot.core.store.sqlite.rows import (
    COLUMNS,
    SELECT,
    USER_COLUMNS,
    USER_SELECT,
    dumps,
    from_ms,
    job_from_row,
    job_row,
    to_ms,
    user_from_row,
)

log = logging.getLogger(__name__)

_EXPORT: dict[str, str] = {
    "jobs": f"SELECT {SELECT} FROM jobs ORDER BY created_at, rowid",
    "users": f"SELECT {USER_SELECT} FROM users ORDER BY user_id",
    "guild_settings": "SELECT guild_id, data FROM guild_settings ORDER BY guild_id",
    "audit": "SELECT data FROM audit ORDER BY at, rowid",
    "meta": "SELECT key, value FROM meta ORDER BY key",
    "defaults": "SELECT scope, owner, name, data, updated_at FROM defaults ORDER BY scope, owner, name",
}


def _upsert(table: str, columns: Sequence[str], key: str) -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != key)
    marks = ", ".join("?" * len(columns))
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) "
        f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
    )


_IMPORT: dict[str, str] = {
    "jobs": _upsert("jobs", (*COLUMNS, "data"), "id"),
    "users": _upsert("users", USER_COLUMNS, "user_id"),
    "guild_settings": _upsert("guild_settings", ("guild_id", "data"), "guild_id"),
    "audit": _upsert("audit", ("id", "at", "actor_id", "guild_id", "target", "data"), "id"),
    "meta": _upsert("meta", ("key", "value"), "key"),
    "defaults": (
        "INSERT INTO defaults (scope, owner, name, data, updated_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (scope, owner, name) DO UPDATE SET "
        "data = excluded.data, updated_at = excluded.updated_at"
    ),
}


def _record(collection: str, row: Sequence[Any]) -> dict[str, Any]:
    if collection == "jobs":
        return job_from_row(row).to_dict()
    if collection == "users":
        return asdict(user_from_row(row))
    if collection == "guild_settings":
        return {"guild_id": row[0], **json.loads(row[1])}
    if collection == "audit":
        data = json.loads(row[0])
        data["at"] = from_ms(data["at"])
        return AuditEntry.from_dict(data).to_dict()
    if collection == "defaults":
        scope, owner, name, data, updated_at = row
        return {
            "scope": scope,
            "owner": owner,
            "name": name,
            "values": json.loads(data),
            "updated_at": from_ms(updated_at),
        }
    return {"key": row[0], "value": json.loads(row[1])}


def _row(collection: str, record: dict[str, Any]) -> Sequence[Any]:
    if collection == "jobs":
        return job_row(Job.from_dict(record))
    if collection == "users":
        user = asdict(UserRecord(**record))
        return [to_ms(v) if k == "banned_at" else scrub_text(v) for k, v in user.items()]
    if collection == "guild_settings":
        data = {k: v for k, v in record.items() if k != "guild_id"}
        return (record["guild_id"], dumps(data))
    if collection == "audit":
        entry = AuditEntry.from_dict(record)
        data = entry.to_dict()
        data["at"] = to_ms(entry.at)
        return (entry.id, data["at"], entry.actor_id, entry.guild_id, scrub_text(entry.target), dumps(data))
    if collection == "defaults":
        return (
            record["scope"],
            record["owner"],
            record.get("name") or "",
            dumps(record["values"]),
            to_ms(record["updated_at"]),
        )
    return (record["key"], dumps(record["value"]))


class SQLiteBulk(SQLiteConnection):
    """`count_records`, `export_records` and `import_records` over every table."""

    async def count_records(self, collection: str) -> int:
        table = check_collection(collection)  # a known name, safe in the statement
        rows = await self._fetch(f"SELECT COUNT(*) FROM {table}")
        return int(rows[0][0])

    async def export_records(
        self, collection: str, *, batch_size: int = 500
    ) -> AsyncIterator[list[dict[str, Any]]]:
        sql = _EXPORT[check_collection(collection)]
        if self._reader is None:
            raise StoreUnavailable("The database is not open.")
        with self._guard():
            async with self._reader.execute(sql) as cursor:
                while rows := await cursor.fetchmany(batch_size):
                    yield [_record(collection, row) for row in rows]

    async def import_records(self, collection: str, records: Sequence[dict[str, Any]]) -> None:
        sql = _IMPORT[check_collection(collection)]
        rows = [_row(collection, record) for record in records]
        if rows:
            await self._write_many(sql, rows)
