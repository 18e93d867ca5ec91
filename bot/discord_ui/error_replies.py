"""One policy for what a member is told when something goes wrong, for commands and buttons.

User errors carry a message that is safe to show; Discord's own refusals get a short
explanation; anything else is a bug: logged with a short incident id, and the member gets an
apology naming that id, never a traceback.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from bot.discord_ui.formatting import incident_id
from generation.errors import UserError

log = logging.getLogger(__name__)

#: Discord's "Unknown interaction": it expired (not answered within 3 s) or never existed
UNKNOWN_INTERACTION = 10062
SHOWN_VALUE_CHARS = 40


def reply_for(error: BaseException, *, where: str) -> str | None:
    """What to tell the member about `error` raised in `where` (a command or button); None = nothing."""
    cause: BaseException = getattr(error, "original", error)
    if isinstance(cause, discord.NotFound) and cause.code == UNKNOWN_INTERACTION:
        # Discord gave up on the interaction (we answered after its 3 s): any reply would get
        # 10062 again, so say so once in the log and let the member simply try again
        log.warning("%s: the interaction expired before it was answered (10062); nothing was done", where)
        return None
    if isinstance(cause, UserError):
        return cause.message
    if isinstance(cause, app_commands.CheckFailure):
        return str(cause) or "You can't use this command here."
    if isinstance(cause, app_commands.TransformerError):
        shown = repr(cause.value).replace("`", "'")
        if len(shown) > SHOWN_VALUE_CHARS:
            shown = shown[: SHOWN_VALUE_CHARS - 1] + "…"
        return f"That value (`{shown}`) doesn't fit this option."
    if isinstance(cause, app_commands.CommandNotFound | app_commands.CommandSignatureMismatch):
        return "This command has changed since Discord last loaded it; reload Discord and try again."
    incident = incident_id()
    log.error("incident %s in %s", incident, where, exc_info=cause)
    return f"Sorry, something went wrong on our side (incident `{incident}`). Please try again later."
