"""What the bot must be allowed to do in a channel, checked before any work is queued.

Every result is a channel message with a file, an embed of its parameters and buttons, posted
with the bot token. A channel where the bot cannot do that would get the GPU work done and the
result lost at delivery, so the check runs at the door, on the `app_permissions` Discord sends
with every interaction, and the member is told in Discord's own words what to grant.
The invite link asks for exactly these permissions.

Read Message History is not required: delivery reads history only to find a result posted just
before a crash, and posts anyway where it may not (see `bot.discord_ui.delivery`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import discord

from generation.errors import UserError

log = logging.getLogger(__name__)

INVITE_SCOPES = ("bot", "applications.commands")


@dataclass(frozen=True)
class Needed:
    """One permission: `discord.Permissions` attribute, Discord's name for it, and why the bot needs it."""

    flag: str
    name: str
    why: str


REQUIRED: tuple[Needed, ...] = (
    Needed("view_channel", "View Channel", "see the channel members use it in"),
    Needed("send_messages", "Send Messages", "post the progress message and the result"),
    Needed("embed_links", "Embed Links", "show the prompt, seed and settings beside the result"),
    Needed("attach_files", "Attach Files", "upload the picture or the video"),
)
#: in a thread, Discord checks this one instead of Send Messages
IN_THREADS = Needed("send_messages_in_threads", "Send Messages in Threads", "post results in threads")
OPTIONAL: tuple[Needed, ...] = (
    Needed(
        "read_message_history",
        "Read Message History",
        "after a crash, find a result it posted just before instead of posting it a second time",
    ),
)


class BotLacksPermissions(UserError):
    """The bot may not deliver in this channel; the message names what to grant."""

    code = "bot_lacks_permissions"

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        bold = [f"**{n}**" for n in missing]
        names = bold[0] if len(bold) == 1 else ", ".join(bold[:-1]) + " and " + bold[-1]
        them = "them" if len(missing) > 1 else "it"
        super().__init__(
            f"I can't post results in this channel: I'm missing the {names} "
            f"permission{'s' if len(missing) > 1 else ''} here, so nothing was queued. "
            f"A server admin can grant {them} to my role in Server Settings → Roles, or in this "
            f"channel's Edit Channel → Permissions (allow {them} for my role)."
        )


def invite_permissions() -> discord.Permissions:
    """Exactly what the bot needs in a channel; nothing server-wide, nothing to moderate with."""
    return discord.Permissions(**{n.flag: True for n in REQUIRED})


def invite_url(application_id: int) -> str:
    """The OAuth2 link that adds the bot with its slash commands and exactly its permissions."""
    return discord.utils.oauth_url(application_id, permissions=invite_permissions(), scopes=INVITE_SCOPES)


def missing_in(perms: discord.Permissions, *, in_thread: bool = False) -> list[str]:
    """Discord's names of the required permissions `perms` lacks (empty when the bot may deliver)."""
    needed = [IN_THREADS if in_thread and n.flag == "send_messages" else n for n in REQUIRED]
    return [n.name for n in needed if not getattr(perms, n.flag)]


def check_can_deliver(interaction: discord.Interaction[Any]) -> None:
    """Raise `BotLacksPermissions` if the bot could not post a result where `interaction` came from."""
    if interaction.guild_id is None:
        return  # a DM: the bot may always answer there
    missing = missing_in(
        interaction.app_permissions, in_thread=isinstance(interaction.channel, discord.Thread)
    )
    if missing:
        log.info(
            "refused a request in channel %s of guild %s: the bot lacks %s",
            interaction.channel_id,
            interaction.guild_id,
            ", ".join(missing),
        )
        raise BotLacksPermissions(missing)
