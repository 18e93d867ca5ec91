"""Buttons on status and result messages: Cancel, Reroll, Delete.

They are `DynamicItem`s: the job id lives in the fixed-shape `custom_id`
(`job:<action>:<job id>`), so a button clicked after a restart is still routed here and
knows its job without any in-memory view state. Permission checks happen in
`interaction_check`, before any work.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, cast

import discord

from bot.discord_ui.error_replies import reply_for
from bot.discord_ui.formatting import short_id

if TYPE_CHECKING:
    from bot.discord_ui.client import ImagineBot

log = logging.getLogger(__name__)

JOB_ID = r"(?P<job_id>[0-9a-f]{32})"
NOT_YOURS = "Only the member who asked for this (or a server admin) can delete it."


def _bot(interaction: discord.Interaction[Any]) -> ImagineBot:
    return cast("ImagineBot", interaction.client)


class _JobButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"job:unused:" + JOB_ID):
    action = "unused"
    label = ""
    emoji = ""
    style = discord.ButtonStyle.secondary

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(
            discord.ui.Button(
                label=self.label,
                emoji=self.emoji,
                style=self.style,
                custom_id=f"job:{self.action}:{job_id}",
            )
        )

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        """Buttons share the slash commands' error policy (bot.error_replies)."""
        try:
            await self.run(interaction)
        except Exception as exc:
            text = reply_for(exc, where=f"button {self.action} of job {self.job_id}")
            if text is not None:
                await _bot(interaction).reply_privately(interaction, text)

    async def run(self, interaction: discord.Interaction[Any]) -> None:
        raise NotImplementedError

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> _JobButton:
        return cls(match["job_id"])


class CancelButton(_JobButton, template=r"job:cancel:" + JOB_ID):
    action = "cancel"
    label = "Cancel"
    emoji = "✖️"
    style = discord.ButtonStyle.danger

    async def run(self, interaction: discord.Interaction[Any]) -> None:
        bot = _bot(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        job = await bot.actions.cancel(self.job_id, interaction=interaction)
        await interaction.followup.send(
            f"Job `{short_id(job.id)}` is {'cancelled' if job.state.is_final else 'being cancelled'}.",
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )


class RerollButton(_JobButton, template=r"job:reroll:" + JOB_ID):
    action = "reroll"
    label = "Reroll"
    emoji = "🎲"
    style = discord.ButtonStyle.primary

    async def run(self, interaction: discord.Interaction[Any]) -> None:
        bot = _bot(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        await bot.actions.reroll(self.job_id, interaction=interaction)


class DeleteButton(_JobButton, template=r"job:delete:" + JOB_ID):
    action = "delete"
    label = "Delete"
    emoji = "🗑️"
    style = discord.ButtonStyle.secondary

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        bot = _bot(interaction)
        job = await bot.store.get_job(self.job_id)
        if job is not None and bot.actions.may_delete(job, interaction):
            return True
        await interaction.response.send_message(
            NOT_YOURS,
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )
        return False

    async def run(self, interaction: discord.Interaction[Any]) -> None:
        bot = _bot(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        await bot.actions.delete_result(self.job_id, interaction=interaction)


def status_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


def result_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(RerollButton(job_id))
    view.add_item(DeleteButton(job_id))
    return view


DYNAMIC_ITEMS: tuple[type[_JobButton], ...] = (CancelButton, RerollButton, DeleteButton)
