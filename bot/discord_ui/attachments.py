"""A member's attached picture (`/video image:`, `/imagine image:`): downloaded, checked, kept.

The one downloader for every command option of type attachment. The declared size is checked
before a byte is fetched; the bytes come from the URL Discord gives, through discord.py's own
HTTP session (`Attachment.read`); the content check and the storage under ``RESULTS_DIR/inputs``
are :mod:`bot.core.inputs`, shared with the REST API.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import discord

from bot.core.inputs import keep_input
from generation.errors import InvalidRequest

if TYPE_CHECKING:
    from bot.settings import Settings

log = logging.getLogger(__name__)


async def keep_attachment(attachment: discord.Attachment, settings: Settings, *, name: str = "image") -> str:
    """Download `attachment`, check it is a picture within the caps, keep it; returns its path.

    Raises `InvalidRequest` (shown privately to the member) for anything that is not a PNG,
    JPEG or WebP within `INPUT_IMAGE_MAX_BYTES` / `INPUT_IMAGE_MAX_PIXELS`, or that cannot be
    downloaded.
    """
    limits = settings.input_limits
    if attachment.size > limits.max_bytes:
        raise InvalidRequest(
            f"{name} is {attachment.size / 1e6:.1f} MB; the most this bot takes is "
            f"{limits.max_bytes / 1e6:.1f} MB."
        )
    try:
        data = await attachment.read()
    except (discord.HTTPException, discord.NotFound) as exc:
        log.warning("could not download attachment %s: %s", attachment.id, exc)
        raise InvalidRequest(
            f"{name} could not be downloaded from Discord; please attach it again."
        ) from None
    return await asyncio.to_thread(keep_input, settings.results_dir, data, limits, name=name)
