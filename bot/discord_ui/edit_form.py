"""The `Edit` form: a result's prompt and negative prompt, prefilled, queued again with the same seed.

Keeping the seed is the point: a member tweaks the wording and sees what the change does to
the same picture, instead of a new random one (that is what Reroll is for).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

import discord

from bot.discord_ui.error_replies import reply_for
from generation.params import MAX_PROMPT_CHARS

if TYPE_CHECKING:
    from bot.core.jobs import Job
    from bot.discord_ui.client import ImagineBot

log = logging.getLogger(__name__)

#: Discord's cap on a modal title
TITLE_CHARS = 45


class EditForm(discord.ui.Modal):
    """One form per click; the job id rides in the modal's `custom_id` (`edit:<job id>`)."""

    def __init__(self, job: Job) -> None:
        super().__init__(title="Edit the request"[:TITLE_CHARS], custom_id=f"edit:{job.id}", timeout=900)
        self.job_id = job.id
        self.prompt: discord.ui.TextInput[EditForm] = discord.ui.TextInput(
            label="Prompt",
            style=discord.TextStyle.paragraph,
            default=job.prompt[:MAX_PROMPT_CHARS],
            max_length=MAX_PROMPT_CHARS,
            required=True,
            custom_id="edit:prompt",
        )
        self.negative: discord.ui.TextInput[EditForm] = discord.ui.TextInput(
            label="Negative prompt",
            style=discord.TextStyle.paragraph,
            default=(job.negative_prompt or "")[:MAX_PROMPT_CHARS] or None,
            max_length=MAX_PROMPT_CHARS,
            required=False,
            custom_id="edit:negative_prompt",
        )
        self.add_item(self.prompt)
        self.add_item(self.negative)

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        bot = cast("ImagineBot", interaction.client)
        try:
            await interaction.response.defer(ephemeral=True, thinking=True)
            await bot.actions.edit(
                self.job_id,
                prompt=self.prompt.value,
                negative_prompt=self.negative.value,
                interaction=interaction,
            )
        except Exception as exc:
            text = reply_for(exc, where=f"edit form of job {self.job_id}")
            if text is not None:
                await bot.reply_privately(interaction, text)
