"""The embedded default store: one SQLite file through aiosqlite, zero setup.

Why it is shaped this way:
- one long-lived connection for writes in autocommit mode (plus one for SELECTs, which WAL lets run
  beside a write, so a status read never queues behind an fsync), and every write is ONE statement
  (`UPDATE … RETURNING`, `INSERT … ON CONFLICT … RETURNING`), so there is never an open transaction
  another coroutine's statement could slip into, and each write is atomic even across processes
  (SQLite's write lock; `busy_timeout` makes a second writer wait instead of failing);
- WAL with `synchronous=FULL`: a write has been fsynced when its await returns;
- jobs keep the columns that are queried or compare-and-set as real indexed columns and every
  other field in a JSON column, so a new `Job` field needs no migration;
- times are INTEGER milliseconds since the epoch (exact, indexable, same precision as Mongo);
- schema changes are an ordered list of migrations applied at `open()` under `BEGIN IMMEDIATE`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import aiosqlite

from bot.core.jobs import Job, JobState
from bot.core.store.base import (
    FINAL_STATES,
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

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_ms(value: datetime | None) -> int | None:
    if value is None:
        return None
    return (to_store_time(value) - EPOCH) // _MS


def from_ms(value: int | None) -> datetime | None:
    return None if value is None else EPOCH + timedelta(milliseconds=value)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):  # a future Job field holding a time: Job.from_dict parses ISO
        return to_store_time(value).isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _dumps(value: Any) -> str:
    return json.dumps(scrub_text(value), ensure_ascii=False, separators=(",", ":"), default=_json_default)


# --------------------------------------------------------------------------- schema and migrations


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="jobs/request log, users, guild settings, audit, meta",
        statements=(
            """CREATE TABLE jobs (
                id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL,
                guild_id TEXT,
                state TEXT NOT NULL,
                kind TEXT NOT NULL,
                model TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                started_at INTEGER,
                finished_at INTEGER,
                lease_owner TEXT,
                lease_expires_at INTEGER,
                attempts INTEGER NOT NULL DEFAULT 0,
                cancel_requested INTEGER NOT NULL DEFAULT 0,
                gpu_seconds REAL,
                data TEXT NOT NULL
            )""",
            "CREATE INDEX jobs_user_time ON jobs (user_id, created_at)",
            "CREATE INDEX jobs_guild_time ON jobs (guild_id, created_at)",
            "CREATE INDEX jobs_state_time ON jobs (state, created_at)",
            "CREATE INDEX jobs_state_lease ON jobs (state, lease_expires_at)",
            "CREATE INDEX jobs_time ON jobs (created_at)",
            """CREATE TABLE users (
                user_id TEXT PRIMARY KEY,
                banned INTEGER NOT NULL DEFAULT 0,
                ban_reason TEXT,
                banned_by TEXT,
                banned_at INTEGER,
                max_queued INTEGER,
                daily_gpu_seconds REAL,
                jobs_total INTEGER NOT NULL DEFAULT 0,
                gpu_seconds_total REAL NOT NULL DEFAULT 0
            )""",
            "CREATE TABLE guild_settings (guild_id TEXT PRIMARY KEY, data TEXT NOT NULL)",
            """CREATE TABLE audit (
                id TEXT PRIMARY KEY,
                at INTEGER NOT NULL,
                actor_id TEXT NOT NULL,
                guild_id TEXT,
                target TEXT,
                data TEXT NOT NULL
            )""",
            "CREATE INDEX audit_time ON audit (at)",
            "CREATE INDEX audit_guild_time ON audit (guild_id, at)",
            "CREATE INDEX audit_actor_time ON audit (actor_id, at)",
            "CREATE INDEX audit_target_time ON audit (target, at)",
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ),
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version

# Job fields kept as real columns (queried, indexed or compare-and-set); all others live in `data`.
_COLUMNS: tuple[str, ...] = (
    "id",
    "user_id",
    "guild_id",
    "state",
    "kind",
    "model",
    "created_at",
    "started_at",
    "finished_at",
    "lease_owner",
    "lease_expires_at",
    "attempts",
    "cancel_requested",
    "gpu_seconds",
)
_COLUMN_SET = frozenset(_COLUMNS)
_TIME_COLUMNS = frozenset({"created_at", "started_at", "finished_at", "lease_expires_at"})
_SELECT = ", ".join((*_COLUMNS, "data"))
_INSERT_JOB = f"INSERT INTO jobs ({_SELECT}) VALUES ({', '.join('?' * (len(_COLUMNS) + 1))})"
_FINAL = tuple(s.value for s in FINAL_STATES)
_USER_SELECT = (
    "user_id, banned, ban_reason, banned_by, banned_at, max_queued, daily_gpu_seconds, "
    "jobs_total, gpu_seconds_total"
)

# SQLite primary result codes that mean "the database cannot be used right now", as opposed to a
# bug in a statement: busy/locked past the timeout, I/O error, disk full, read-only, cannot open, ...
_OUTAGE_CODES = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})


def _column_value(name: str, value: Any) -> Any:
    if name in _TIME_COLUMNS:
        return to_ms(value)
    if name == "cancel_requested":
        return int(bool(value))
    if name == "state":
        return JobState(value).value
    if isinstance(value, str):
        return scrub_text(value)
    return value


def _job_from_row(row: Sequence[Any]) -> Job:
    data = json.loads(row[-1])
    for i, name in enumerate(_COLUMNS):
        value = row[i]
        if name in _TIME_COLUMNS:
            value = from_ms(value)
        elif name == "cancel_requested":
            value = bool(value)
        data[name] = value
    return Job.from_dict(data)


def _user_from_row(row: Sequence[Any]) -> UserRecord:
    return UserRecord(
        user_id=row[0],
        banned=bool(row[1]),
        ban_reason=row[2],
        banned_by=row[3],
        banned_at=from_ms(row[4]),
        max_queued=row[5],
        daily_gpu_seconds=row[6],
        jobs_total=row[7],
        gpu_seconds_total=float(row[8]),
    )


def _set_clause(changes: dict[str, Any]) -> tuple[str, list[Any]]:
    """`col = ?, …, data = json_set(data, '$.k', json(?), …)` for a validated partial job update."""
    parts: list[str] = []
    params: list[Any] = []
    json_paths: list[str] = []
    json_params: list[Any] = []
    for key, value in changes.items():
        if key in _COLUMN_SET:
            parts.append(f"{key} = ?")
            params.append(_column_value(key, value))
        else:  # key is a validated Job field name, safe to put in the path
            json_paths.append(f"'$.{key}', json(?)")
            json_params.append(_dumps(value))
    if json_paths:
        parts.append(f"data = json_set(data, {', '.join(json_paths)})")
        params.extend(json_params)
    return ", ".join(parts), params


class SQLiteStore(Store):
    """Store in one SQLite file (created with its parent directories on first open)."""

    name = "sqlite"

    def __init__(
        self,
        *,
        path: str | Path,
        busy_timeout_ms: int = 5000,
        synchronous: Literal["FULL", "NORMAL", "OFF"] = "FULL",
    ) -> None:
        """`synchronous="FULL"` (the default, and what the bot uses) fsyncs every commit; the
        others exist for throwaway test databases and for measuring what the fsync costs."""
        if synchronous not in ("FULL", "NORMAL", "OFF"):
            raise ValueError(f"synchronous must be FULL, NORMAL or OFF, not {synchronous!r}")
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous
        self._conn: aiosqlite.Connection | None = None  # every write, in autocommit
        self._reader: aiosqlite.Connection | None = None  # SELECTs, so reads never wait on an fsync

    # ----------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        if self._conn is not None:
            return
        if str(self.path) != ":memory:":
            await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)
        try:
            conn = await aiosqlite.connect(str(self.path), isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"The SQLite store {self.path} cannot be opened ({exc}).") from exc
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            mode = (await conn.execute_fetchall("PRAGMA journal_mode = WAL"))[0][0]
            await conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            await self._migrate(conn)
        except BaseException:
            await conn.close()
            raise
        reader = conn
        if str(self.path) != ":memory:":  # a second in-memory connection would be another database
            try:
                reader = await aiosqlite.connect(str(self.path), isolation_level=None)
                await reader.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
                await reader.execute("PRAGMA query_only = 1")
            except BaseException:
                await conn.close()
                raise
        self._conn, self._reader = conn, reader
        log.info("SQLite store open: %s (journal %s, schema v%d)", self.path, mode, SCHEMA_VERSION)

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at INTEGER NOT NULL)"
        )
        await conn.execute("BEGIN IMMEDIATE")  # another process opening the same file waits here
        try:
            rows = await conn.execute_fetchall("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            current = rows[0][0]
            if current > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has schema v{current}, newer than this code (v{SCHEMA_VERSION}): "
                    "upgrade the bot instead of downgrading the database"
                )
            for migration in MIGRATIONS:
                if migration.version <= current:
                    continue
                log.info("SQLite store: migrating to v%d (%s)", migration.version, migration.description)
                for statement in migration.statements:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.description, to_ms(datetime.now(UTC))),
                )
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        conn, reader = self._conn, self._reader
        self._conn = self._reader = None
        if reader is not None and reader is not conn:
            await reader.close()
        if conn is not None:
            await conn.close()

    async def ping(self) -> bool:
        try:
            await self._fetch("SELECT 1")
        except Exception:
            return False
        return True

    async def schema_version(self) -> int:
        rows = await self._fetch("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        return int(rows[0][0])

    # ----------------------------------------------------------------- plumbing

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in _OUTAGE_CODES:
                name = getattr(exc, "sqlite_errorname", "error")
                raise StoreUnavailable(
                    f"The database is unavailable right now ({name}); please try again shortly."
                ) from exc
            raise
        except ValueError as exc:  # aiosqlite: the connection was closed under us
            if "connection" in str(exc).lower():
                raise StoreUnavailable("The database connection is closed.") from exc
            raise

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = self._reader if sql.startswith("SELECT") else self._conn
        if conn is None:
            raise StoreUnavailable("The database is not open.")
        with self._guard():
            return list(await conn.execute_fetchall(sql, params))

    async def _fetch_jobs(self, sql: str, params: Sequence[Any] = ()) -> list[Job]:
        return [_job_from_row(row) for row in await self._fetch(sql, params)]

    async def _fetch_job(self, sql: str, params: Sequence[Any] = ()) -> Job | None:
        rows = await self._fetch(sql, params)
        return _job_from_row(rows[0]) if rows else None

    # ----------------------------------------------------------------- jobs

    async def insert_job(self, job: Job) -> None:
        data = job.to_dict()
        values = [_column_value(name, data.pop(name)) for name in _COLUMNS]
        values.append(_dumps(data))
        try:
            await self._fetch(_INSERT_JOB, values)
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"job {job.id} already exists") from exc

    async def get_job(self, job_id: str) -> Job | None:
        return await self._fetch_job(f"SELECT {_SELECT} FROM jobs WHERE id = ?", (job_id,))

    async def update_job(self, job_id: str, **changes: Any) -> Job | None:
        changes = check_job_changes(changes)
        if not changes:
            return await self.get_job(job_id)
        clause, params = _set_clause(changes)
        return await self._fetch_job(
            f"UPDATE jobs SET {clause} WHERE id = ? RETURNING {_SELECT}", (*params, job_id)
        )

    async def claim_job(
        self, job_id: str, *, owner: str, lease_expires_at: datetime, now: datetime
    ) -> Job | None:
        return await self._fetch_job(
            "UPDATE jobs SET state = 'in_progress', attempts = attempts + 1, started_at = ?, "
            "lease_owner = ?, lease_expires_at = ? "
            f"WHERE id = ? AND state = 'queued' AND cancel_requested = 0 RETURNING {_SELECT}",
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
        state = JobState(state)
        if not state.is_final:
            raise ValueError(f"finish_job needs a final state, not {state.value!r}")
        changes = check_job_changes(changes)
        changes["state"] = state
        changes["lease_owner"] = None
        changes["lease_expires_at"] = None
        changes.setdefault("finished_at", datetime.now(UTC))
        clause, params = _set_clause(changes)
        where = "id = ? AND state NOT IN (?, ?, ?)"
        args: list[Any] = [*params, job_id, *_FINAL]
        if owner is not None:
            where += " AND lease_owner = ?"
            args.append(owner)
        return await self._fetch_job(f"UPDATE jobs SET {clause} WHERE {where} RETURNING {_SELECT}", args)

    async def requeue_job(self, job_id: str, *, owner: str | None) -> Job | None:
        where = "id = ? AND state = 'in_progress'"
        args: list[Any] = [job_id]
        if owner is not None:
            where += " AND lease_owner = ?"
            args.append(owner)
        return await self._fetch_job(
            "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL "
            f"WHERE {where} RETURNING {_SELECT}",
            args,
        )

    async def jobs_in_states(self, states: Iterable[JobState], *, limit: int | None = None) -> list[Job]:
        values = [JobState(s).value for s in states]
        if not values:
            return []
        marks = ", ".join("?" * len(values))
        return await self._fetch_jobs(
            f"SELECT {_SELECT} FROM jobs WHERE state IN ({marks}) ORDER BY created_at, rowid LIMIT ?",
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
            f"SELECT {_SELECT} FROM jobs WHERE state = 'in_progress' AND lease_expires_at < ? "
            "ORDER BY lease_expires_at",
            (to_ms(now),),
        )

    # ----------------------------------------------------------------- request log queries

    async def user_history(self, user_id: str, *, limit: int = 10, offset: int = 0) -> list[Job]:
        return await self._fetch_jobs(
            f"SELECT {_SELECT} FROM jobs WHERE user_id = ? "
            "ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
            (user_id, limit, offset),
        )

    async def guild_recent(self, guild_id: str, *, limit: int = 20) -> list[Job]:
        return await self._fetch_jobs(
            f"SELECT {_SELECT} FROM jobs WHERE guild_id = ? ORDER BY created_at DESC, rowid DESC LIMIT ?",
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
            f"SELECT {_SELECT} FROM jobs WHERE {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (*params, limit),
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

    # ----------------------------------------------------------------- users

    async def get_user(self, user_id: str) -> UserRecord:
        rows = await self._fetch(f"SELECT {_USER_SELECT} FROM users WHERE user_id = ?", (user_id,))
        return _user_from_row(rows[0]) if rows else UserRecord(user_id=user_id)

    async def set_ban(self, user_id: str, *, banned: bool, reason: str | None, by: str) -> UserRecord:
        values = (
            (user_id, 1, scrub_text(reason), by, to_ms(datetime.now(UTC)))
            if banned
            else (user_id, 0, None, None, None)
        )
        rows = await self._fetch(
            "INSERT INTO users (user_id, banned, ban_reason, banned_by, banned_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET banned = excluded.banned, ban_reason = excluded.ban_reason, "
            f"banned_by = excluded.banned_by, banned_at = excluded.banned_at RETURNING {_USER_SELECT}",
            values,
        )
        return _user_from_row(rows[0])

    async def set_user_quota(
        self, user_id: str, *, max_queued: int | None, daily_gpu_seconds: float | None
    ) -> UserRecord:
        rows = await self._fetch(
            "INSERT INTO users (user_id, max_queued, daily_gpu_seconds) VALUES (?, ?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET max_queued = excluded.max_queued, "
            f"daily_gpu_seconds = excluded.daily_gpu_seconds RETURNING {_USER_SELECT}",
            (user_id, max_queued, daily_gpu_seconds),
        )
        return _user_from_row(rows[0])

    async def add_usage(self, user_id: str, *, jobs: int = 0, gpu_seconds: float = 0.0) -> None:
        await self._fetch(
            "INSERT INTO users (user_id, jobs_total, gpu_seconds_total) VALUES (?, ?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET jobs_total = jobs_total + excluded.jobs_total, "
            "gpu_seconds_total = gpu_seconds_total + excluded.gpu_seconds_total",
            (user_id, int(jobs), float(gpu_seconds)),
        )

    # ----------------------------------------------------------------- guild settings

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
            (guild_id, _dumps(changes), *(_dumps(v) for v in changes.values())),
        )
        return GuildSettings.from_dict({**json.loads(rows[0][0]), "guild_id": guild_id})

    # ----------------------------------------------------------------- audit

    async def add_audit(self, entry: AuditEntry) -> None:
        data = entry.to_dict()
        data["at"] = to_ms(entry.at)
        await self._fetch(
            "INSERT INTO audit (id, at, actor_id, guild_id, target, data) VALUES (?, ?, ?, ?, ?, ?)",
            (entry.id, data["at"], entry.actor_id, entry.guild_id, scrub_text(entry.target), _dumps(data)),
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

    # ----------------------------------------------------------------- meta

    async def get_meta(self, key: str) -> Any | None:
        rows = await self._fetch("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    async def set_meta(self, key: str, value: Any) -> None:
        await self._fetch(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, _dumps(value)),
        )

    # ----------------------------------------------------------------- privacy

    async def delete_user_data(self, user_id: str) -> int:
        rows = await self._fetch(
            "DELETE FROM jobs WHERE user_id = ? AND state != 'in_progress' "
            "RETURNING json_extract(data, '$.result_path')",
            (user_id,),
        )
        await self._fetch(
            "UPDATE users SET jobs_total = 0, gpu_seconds_total = 0 WHERE user_id = ?", (user_id,)
        )
        paths = [p for (p,) in rows if p]
        if paths:
            await asyncio.to_thread(remove_files, paths)
        log.info("deleted %d stored requests and %d files of user %s", len(rows), len(paths), user_id)
        return len(rows)
