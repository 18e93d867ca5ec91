"""A local stand-in for Discord (REST + gateway) that runs an unmodified discord.py 2.7 bot.

Start with `FakeDiscord` (see `server.py` for a usage example); build the world with
`FakeGuild`, `FakeChannel`, `FakeRole`, `FakeUser`, `FakeMember`; read results as
`FakeMessage`, `FakeAttachment`, `FakeInteraction` and `InteractionResponse`.

Every request is checked as Discord checks it: against Discord's OpenAPI description
(`discord_openapi.json`, trimmed by `trim_spec.py`, checked by `spec_check.py`) and the
documented limits it does not encode (`messages.py`, `commands.py`); the bot's own permissions
per channel (`FakeDiscord.set_bot_permissions`) decide what it may read and post. A refused
request fails the test that caused it unless the test takes it back.
"""

from __future__ import annotations

import logging

from .gateway import Close, Heartbeat, Intent
from .interactions import FakeInteraction, InteractionResponse, InvalidInteraction, OptionType, ResponseType
from .messages import FakeAttachment, FakeMessage, MessageVersion, Pings
from .models import (
    ALL_PERMISSIONS,
    EVERYONE_PERMISSIONS,
    MIB,
    ChannelType,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeRole,
    FakeUser,
    Overwrite,
    Perm,
)
from .server import BOT_PERMISSIONS, FakeDiscord
from .state import FaultRule, RecordedCall

log = logging.getLogger(__name__)

__all__ = [
    "ALL_PERMISSIONS",
    "BOT_PERMISSIONS",
    "EVERYONE_PERMISSIONS",
    "MIB",
    "ChannelType",
    "Close",
    "FakeAttachment",
    "FakeChannel",
    "FakeDiscord",
    "FakeGuild",
    "FakeInteraction",
    "FakeMember",
    "FakeMessage",
    "FakeRole",
    "FakeUser",
    "FaultRule",
    "Heartbeat",
    "Intent",
    "InteractionResponse",
    "InvalidInteraction",
    "MessageVersion",
    "OptionType",
    "Overwrite",
    "Perm",
    "Pings",
    "RecordedCall",
    "ResponseType",
]
