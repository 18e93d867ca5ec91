"""`SQLiteStore`: the embedded default store, assembled from one mixin per job."""

from __future__ import annotations

import logging

from bot.core.store.sqlite.bulk import SQLiteBulk
from bot.core.store.sqlite.defaults import SQLiteDefaults
from bot.core.store.sqlite.jobs import SQLiteJobs
from bot.core.store.sqlite.moderation import SQLiteModeration
from bot.core.store.sqlite.request_log import SQLiteRequestLog

log = logging.getLogger(__name__)


class SQLiteStore(SQLiteJobs, SQLiteRequestLog, SQLiteModeration, SQLiteDefaults, SQLiteBulk):
    """Store in one SQLite file (created with its parent directories on first open)."""
