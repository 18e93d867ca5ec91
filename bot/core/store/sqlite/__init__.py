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

Modules, one job each: `connection` (open/close, statements, errors), `schema` (migrations),
`rows` (record <-> row), `jobs` (queue state), `request_log` (queries), `moderation` (users,
guild settings, audit, meta, deletion), `bulk` (export/import for migrations), `store` (the
assembled `SQLiteStore`).
"""

from __future__ import annotations

import logging

from bot.core.store.sqlite.rows import from_ms, to_ms
from bot.core.store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION, Migration
from bot.core.store.sqlite.store import SQLiteStore

log = logging.getLogger(__name__)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration", "SQLiteStore", "from_ms", "to_ms"]
