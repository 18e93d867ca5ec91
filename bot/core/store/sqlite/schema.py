"""The SQLite schema as an ordered list of migrations, applied at `open()` under `BEGIN IMMEDIATE`.

`migrate()` reads `MIGRATIONS` and `SCHEMA_VERSION` from this module when it runs, so a test can
append a migration by patching them here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

from bot.core.store.sqlite.rows import to_ms

log = logging.getLogger(__name__)


#: the partial index's condition; `recent_trouble` names that index (without statistics the planner
#: would rather take (state, …) and sort) and spells its WHERE clause with this very text, which is
#: how SQLite knows the index covers the query (else INDEXED BY fails the statement)
TROUBLE_WHERE = "state IN ('failed', 'cancelled')"


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
    Migration(
        version=2,
        description="saved request defaults: member, channel, guild, presets",
        statements=(
            """CREATE TABLE defaults (
                scope TEXT NOT NULL,
                owner TEXT NOT NULL,
                name TEXT NOT NULL DEFAULT '',
                data TEXT NOT NULL,
                updated_at INTEGER NOT NULL,
                PRIMARY KEY (scope, owner, name)
            )""",
        ),
    ),
    Migration(
        version=3,
        description="index of recently failed and cancelled jobs for the status page",
        statements=(f"CREATE INDEX jobs_trouble_finished ON jobs (finished_at) WHERE {TROUBLE_WHERE}",),
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version


async def migrate(conn: aiosqlite.Connection, path: Path) -> None:
    """Bring the database at `path` to `SCHEMA_VERSION`; refuse one written by newer code."""
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
                f"{path} has schema v{current}, newer than this code (v{SCHEMA_VERSION}): "
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
