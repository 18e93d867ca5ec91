"""The `Upscale` message command (right-click a message, Apps, Upscale): any posted picture, ours or not.

A context menu cannot be declared inside a cog, so the cog adds it to the tree when it loads.
The picture is downloaded through the one downloader (`bot.discord_ui.attachments`), checked
and kept like any input; the job is then the same as the `Upscale` button's.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.inputs import DEFAULT_UPSCALE_PROMPT
from bot.discord_ui.attachments import keep_attachment
from generation.errors import InvalidRequest

if TYPE_CHECKING:
    from bot.discord_ui.client import ImagineBot

log = logging.getLogger(__name__)


def _picture(message: discord.Message) -> discord.Attachment:
    for attachment in message.attachments:
        if (attachment.content_type or "").startswith("image/") or attachment.width:
            return attachment
    raise InvalidRequest("That message has no picture to upscale.")


def _prompt(message: discord.Message, me: discord.abc.User | None) -> str:
    """Our own result's prompt (its embed title); anyone else's picture gets a neutral one."""
    if me is not None and message.author.id == me.id and message.embeds and message.embeds[0].title:
        return message.embeds[0].title
    return DEFAULT_UPSCALE_PROMPT


class Upscale(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(name="Upscale", callback=self.upscale_message)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    async def upscale_message(self, interaction: discord.Interaction[Any], message: discord.Message) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        attachment = _picture(message)
        image = await keep_attachment(attachment, self.bot.settings)
        await self.bot.actions.submit_upscale(
            interaction, image=image, prompt=_prompt(message, self.bot.user)
        )


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Upscale(bot))
