"""`MongoStore`: the MongoDB store, assembled from one mixin per job."""

from __future__ import annotations

import logging

from bot.core.store.mongo.bulk import MongoBulk
from bot.core.store.mongo.defaults import MongoDefaults
from bot.core.store.mongo.jobs import MongoJobs
from bot.core.store.mongo.moderation import MongoModeration
from bot.core.store.mongo.request_log import MongoRequestLog

log = logging.getLogger(__name__)


class MongoStore(MongoJobs, MongoRequestLog, MongoModeration, MongoDefaults, MongoBulk):
    """Store in a MongoDB database, on the caller's client or on its own (see `MongoConnection`)."""
