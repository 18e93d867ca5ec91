"""The bot's web server: health, Prometheus metrics, REST API, signed downloads, status page.

`create_web_app(settings=, store=, queue=, registry=)` builds the aiohttp app around the
services the bot already runs; `serve(app, host=, port=)` runs it; `python -m bot.web` runs
it alone (REST only, no Discord). `LinkSigner` makes the signed download links that Discord
delivery posts when a file is too large to upload.
"""

from __future__ import annotations

import logging

from bot.web.app import create_web_app, default_checks, serve
from bot.web.links import LinkExpired, LinkInvalid, LinkSigner

log = logging.getLogger(__name__)

__all__ = ["LinkExpired", "LinkInvalid", "LinkSigner", "create_web_app", "default_checks", "serve"]
