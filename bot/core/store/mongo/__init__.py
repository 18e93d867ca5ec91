"""The MongoDB store, through an injected motor client.

Every motor call of the project lives in this package, and it uses only the API that motor and
PyMongo's own `AsyncMongoClient` share (collections, `find_one_and_update`, `insert_one`,
`update_one`, `delete_many`, `insert_many`, `count_documents`, `find().sort().limit().to_list()`
and `async for` over a cursor, `create_index`, `command`;
`aggregate` through `MongoConnection._aggregate`, which awaits the cursor where PyMongo returns a
coroutine), so moving off motor (deprecated May 2025) is the one-line change in `make_client`.

Modules, one job each: `client` (building the client, write concern), `connection` (open/close,
errors), `schema` (migrations, indexes), `documents` (record <-> document), `jobs` (queue state),
`request_log` (queries), `moderation` (users, guild settings, audit, meta, deletion), `bulk`
(export/import for migrations), `store` (the assembled `MongoStore`).
"""

from __future__ import annotations

import logging

from bot.core.store.mongo.client import make_client, parse_write_concern
from bot.core.store.mongo.schema import INDEXES, MIGRATIONS, SCHEMA_KEY, SCHEMA_VERSION, Migration
from bot.core.store.mongo.store import MongoStore

log = logging.getLogger(__name__)

__all__ = [
    "INDEXES",
    "MIGRATIONS",
    "SCHEMA_KEY",
    "SCHEMA_VERSION",
    "Migration",
    "MongoStore",
    "make_client",
    "parse_write_concern",
]
