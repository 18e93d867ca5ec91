"""Typed keys for what the web app holds (aiohttp's `AppKey`), kept apart to avoid import cycles."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bot.core.metrics import BusyTracker
from bot.core.moderation import Moderator
from bot.web.auth import ApiCaller, ApiKeys
from bot.web.links import LinkSigner
from bot.web.media import PosterIndex

if TYPE_CHECKING:
    from bot.core.store import Store
    from bot.settings import Settings
    from generation.models import ModelSpec

log = logging.getLogger(__name__)

SETTINGS_KEY: web.AppKey[Settings] = web.AppKey("settings")
STORE_KEY: web.AppKey[Store] = web.AppKey("store")
QUEUE_KEY: web.AppKey[Any] = web.AppKey("queue")
REGISTRY_KEY: web.AppKey[Mapping[str, ModelSpec]] = web.AppKey("registry")
KEYS_KEY = web.AppKey("api_keys", ApiKeys)
MODERATOR_KEY = web.AppKey("moderator", Moderator)
SIGNER_KEY = web.AppKey("signer", LinkSigner)
POSTERS_KEY = web.AppKey("posters", PosterIndex)
BUSY_KEY = web.AppKey("busy", BusyTracker)
#: the latest failed and cancelled jobs, read from the store (a `status_page.RecentTrouble`)
TROUBLE_KEY: web.AppKey[Any] = web.AppKey("trouble")
CHECKS_KEY: web.AppKey[list[Callable[[], Awaitable[str | None]]]] = web.AppKey("checks")
#: the authenticated API caller, set by the API's auth middleware
CALLER_KEY = web.RequestKey("caller", ApiCaller)
