"""Storage: pick the driver named by `STORE_URL` and hand back an unopened `Store`.

`sqlite:///data/bot.db` (the default, zero setup) or `mongodb://…` / `mongodb+srv://…`. Drivers are
imported lazily so a SQLite deployment never imports motor, and vice versa.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from bot.core.store.base import (
    AuditEntry,
    GuildSettings,
    ModelStats,
    Store,
    StoreUnavailable,
    Usage,
    UserRecord,
    UserUsage,
)

if TYPE_CHECKING:
    from bot.settings import Settings

log = logging.getLogger(__name__)

__all__ = [
    "AuditEntry",
    "GuildSettings",
    "ModelStats",
    "Store",
    "StoreUnavailable",
    "Usage",
    "UserRecord",
    "UserUsage",
    "create_store",
    "mongo_db_name",
    "sqlite_path",
]

SCHEMES = ("sqlite:///", "mongodb://", "mongodb+srv://")


def sqlite_path(url: str) -> Path:
    """`sqlite:///data/bot.db` -> data/bot.db (relative); `sqlite:////var/bot.db` -> /var/bot.db."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"STORE_URL {url!r} is not a sqlite:/// URL")
    path = unquote(url[len("sqlite:///") :].split("?", 1)[0])
    if not path:
        raise ValueError("STORE_URL 'sqlite:///' names no file: use e.g. sqlite:///data/bot.db")
    return Path(path)


def mongo_db_name(url: str, default: str) -> str:
    """The database named in the URL path, else `MONGODB_DB` (no DNS lookup, unlike parse_uri)."""
    path = urlsplit(url).path.lstrip("/")
    return unquote(path) if path else default


def create_store(settings: Settings, *, buffered: bool = False) -> Store:
    """Build (not open) the store `settings.store_url` names.

    With `buffered=True` the driver is wrapped in a `BufferedStore` holding up to
    `LOG_BUFFER_MAX` request-log writes while the database is unreachable.
    Raises ValueError naming STORE_URL for any other scheme, so startup stops with a clear message.
    """
    url = settings.store_url.strip()
    store: Store
    if url.startswith("sqlite:///"):
        from bot.core.store.sqlite import SQLiteStore

        store = SQLiteStore(path=sqlite_path(url))
    elif url.startswith(("mongodb://", "mongodb+srv://")):
        from bot.core.store.mongo import MongoStore, make_client

        store = MongoStore(
            client_factory=functools.partial(make_client, url),
            db_name=mongo_db_name(url, settings.mongodb_db),
            write_concern=settings.mongodb_write_concern,
        )
    else:
        scheme = url.split(":", 1)[0] if ":" in url else url
        hint = " (SQLite URLs take three slashes before a relative path)" if scheme == "sqlite" else ""
        raise ValueError(
            f"STORE_URL has an unsupported scheme {scheme!r}{hint}: use "
            "sqlite:///path/to/bot.db, mongodb://host/db or mongodb+srv://cluster/db"
        )
    if buffered:
        from bot.core.store.buffer import BufferedStore

        store = BufferedStore(store, max_items=settings.log_buffer_max)
    return store
