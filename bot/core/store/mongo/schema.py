"""The Mongo schema: versioned migrations (the version kept in `meta`) and the indexes ensured at
every open."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, DESCENDING

log = logging.getLogger(__name__)

SCHEMA_KEY = "store.schema_version"


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Any], Awaitable[None]]  # receives the database


async def _v1(db: Any) -> None:
    """Collections are created by the first write; the indexes are ensured at every open."""


async def _v2(db: Any) -> None:
    """Saved defaults live in their own collection, created by the first write; its index below."""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "jobs/request log, users, guild settings, audit, meta", _v1),
    Migration(2, "saved request defaults: member, channel, guild, presets", _v2),
)
SCHEMA_VERSION = MIGRATIONS[-1].version

INDEXES: dict[str, list[list[tuple[str, int]]]] = {
    "jobs": [
        [("user_id", ASCENDING), ("created_at", DESCENDING), ("seq", DESCENDING)],
        [("guild_id", ASCENDING), ("created_at", DESCENDING), ("seq", DESCENDING)],
        [("state", ASCENDING), ("created_at", ASCENDING), ("seq", ASCENDING)],
        [("state", ASCENDING), ("lease_expires_at", ASCENDING)],
        [("state", ASCENDING), ("finished_at", DESCENDING), ("seq", DESCENDING)],
        [("created_at", ASCENDING)],
    ],
    "defaults": [[("scope", ASCENDING), ("owner", ASCENDING), ("name", ASCENDING)]],
    "audit": [
        [("at", DESCENDING), ("seq", DESCENDING)],
        [("guild_id", ASCENDING), ("at", DESCENDING)],
        [("actor_id", ASCENDING), ("at", DESCENDING)],
        [("target", ASCENDING), ("at", DESCENDING)],
    ],
}
