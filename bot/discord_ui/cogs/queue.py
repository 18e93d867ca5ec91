"""/queue status and /queue cancel: where am I, and let me take it back.

Discord cannot run a command group by its bare name, so the overview is `/queue status`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.jobs import JobState
from bot.discord_ui.formatting import duration, progress_bar, safe_text, short_id
from generation.errors import InvalidRequest

if TYPE_CHECKING:
    from bot.discord_ui.client import ImagineBot

log = logging.getLogger(__name__)

NONE = discord.AllowedMentions.none()
MAX_LISTED = 10


class Queue(commands.GroupCog, group_name="queue", group_description="See and manage the generation queue"):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="status")
    async def status(self, interaction: discord.Interaction[Any]) -> None:
        """Queue length, what is running, and your jobs with positions and ETAs."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        snap = self.bot.queue.snapshot()
        me = str(interaction.user.id)
        paused = " · ⏸️ paused by the bot's owner" if snap.paused else ""
        guild_id = str(interaction.guild_id) if interaction.guild_id else None
        if not paused and guild_id and (await self.bot.store.get_guild_settings(guild_id)).paused:
            paused = " · ⏸️ paused on this server by its admins"
        lines = [f"**Queue:** {len(snap.queued)} waiting{paused}"]
        for entry in snap.running[:MAX_LISTED]:
            job = entry.job
            lines.append(
                f"**{entry.phase.capitalize()}:** {job.kind} `{short_id(job.id)}` for "
                f"{safe_text(job.user_name, 40)} `{progress_bar(entry.step, entry.total)}` "
                f"{entry.step}/{entry.total}"
            )
        if not snap.running:
            lines.append("**Running:** nothing")
        mine = [entry for entry in snap.queued if entry.job.user_id == me]
        mine_running = [e.job for e in snap.running if e.job.user_id == me]
        for job in mine_running:
            lines.append(f"Your job `{short_id(job.id)}` is running now.")
        for entry in mine[:MAX_LISTED]:
            lines.append(
                f"• `{short_id(entry.job.id)}` {entry.job.kind}: position **{entry.position}**, "
                f"ETA {duration(entry.eta_s)} — {safe_text(entry.job.prompt, 60)}"
            )
        if not mine and not mine_running:
            lines.append("You have no jobs waiting.")
        await interaction.followup.send("\n".join(lines), ephemeral=True, allowed_mentions=NONE)

    async def _my_jobs(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        snap = self.bot.queue.snapshot()
        me = str(interaction.user.id)
        jobs = [e.job for e in snap.running if e.job.user_id == me]
        jobs += [e.job for e in snap.queued if e.job.user_id == me]
        return [
            app_commands.Choice(name=f"{short_id(j.id)} {j.kind}: {j.prompt}"[:100], value=j.id)
            for j in jobs
            if current.lower() in j.id or current.lower() in j.prompt.lower()
        ][:25]

    @app_commands.command(name="cancel")
    @app_commands.describe(job="Job id (the first 8 characters are enough); empty = your newest job")
    @app_commands.autocomplete(job=_my_jobs)
    async def cancel(self, interaction: discord.Interaction[Any], job: str | None = None) -> None:
        """Cancel one of your jobs, queued or running."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        job_id = self._resolve(interaction, job)
        cancelled = await self.bot.actions.cancel(job_id, interaction=interaction)
        state = "cancelled" if cancelled.state is JobState.CANCELLED else "stopping at the next step"
        await interaction.followup.send(
            f"Job `{short_id(cancelled.id)}`: {state}.", ephemeral=True, allowed_mentions=NONE
        )

    def _resolve(self, interaction: discord.Interaction[Any], prefix: str | None) -> str:
        """A job id from a full id, an 8-character prefix, or nothing (the member's newest)."""
        snap = self.bot.queue.snapshot()
        me = str(interaction.user.id)
        candidates = [e.job for e in snap.queued] + [e.job for e in snap.running]
        if prefix:
            prefix = prefix.strip().lower()
            matches = [j for j in candidates if j.id.startswith(prefix)]
            if len(prefix) == 32 and not matches:
                return prefix  # not active any more: let cancel() give the precise answer
            if len(matches) != 1:
                raise InvalidRequest(f"No single active job starts with `{safe_text(prefix, 32)}`.")
            return matches[0].id
        mine = sorted((j for j in candidates if j.user_id == me), key=lambda j: j.created_at)
        if not mine:
            raise InvalidRequest("You have no queued or running jobs to cancel.")
        return mine[-1].id


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Queue(bot))
