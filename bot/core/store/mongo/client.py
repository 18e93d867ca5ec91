"""The one place a MongoDB client is built, and the write concern every write uses."""

from __future__ import annotations

import logging
from typing import Any

from pymongo import WriteConcern

log = logging.getLogger(__name__)


def make_client(url: str) -> Any:
    """The production client for `url` (motor today; `pymongo.AsyncMongoClient` is a drop-in)."""
    from motor.motor_asyncio import AsyncIOMotorClient

    options: dict[str, Any] = {"tz_aware": True}
    query = url.split("?", 1)[1].lower() if "?" in url else ""
    if "serverselectiontimeoutms" not in query:
        options["serverSelectionTimeoutMS"] = 5000  # fail fast instead of 30 s when the DB is down
    if "appname" not in query:
        options["appname"] = "imagine-bot"
    return AsyncIOMotorClient(url, **options)


def parse_write_concern(value: str | int) -> WriteConcern:
    """`majority` (default) or a node count; always journaled."""
    text = str(value).strip()
    w: str | int = int(text) if text.isdigit() else text
    return WriteConcern(w=w, j=True)
