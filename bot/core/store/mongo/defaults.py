"""Saved request defaults in MongoDB: one document per (scope, owner, name), `_id` joining the three."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from bot.core.store.base import scrub_text
from bot.core.store.mongo.connection import MongoConnection
from bot.core.store.mongo.documents import to_bson_time

log = logging.getLogger(__name__)


def defaults_id(scope: str, owner: str, name: str) -> str:
    """Scope and owner never hold a NUL; the name is the rest, whatever it contains."""
    return f"{scope}\x00{owner}\x00{name}"


class MongoDefaults(MongoConnection):
    """Member, channel and guild defaults and members' presets (bot.core.defaults)."""

    async def get_defaults(self, scope: str, owner: str, name: str = "") -> dict[str, Any] | None:
        async with self._guard():
            doc = await self.defaults.find_one({"_id": defaults_id(scope, owner, name)})
        return dict(doc["values"]) if doc else None

    async def set_defaults(self, scope: str, owner: str, values: dict[str, Any], name: str = "") -> None:
        doc = {
            "scope": scope,
            "owner": owner,
            "name": name,
            "values": scrub_text(values),
            "updated_at": to_bson_time(datetime.now(UTC)),
        }
        async with self._guard():
            await self.defaults.update_one(
                {"_id": defaults_id(scope, owner, name)}, {"$set": doc}, upsert=True
            )

    async def delete_defaults(self, scope: str, owner: str, name: str = "") -> bool:
        async with self._guard():
            result = await self.defaults.delete_one({"_id": defaults_id(scope, owner, name)})
        return bool(result.deleted_count)

    async def list_defaults(self, scope: str, owner: str) -> dict[str, dict[str, Any]]:
        async with self._guard():
            docs = await self.defaults.find({"scope": scope, "owner": owner}).sort("name", 1).to_list(None)
        return {doc["name"]: dict(doc["values"]) for doc in docs}
