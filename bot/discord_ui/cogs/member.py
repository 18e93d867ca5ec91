"""/history, /info and /help: what a member can look up about their own use and the bot."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.jobs import Job
from bot.core.store.base import Store
from bot.discord_ui.formatting import EMBED_COLOUR, duration, grid_text, lineage_text, safe_text, short_id
from bot.discord_ui.permissions import REQUIRED

if TYPE_CHECKING:
    from bot.discord_ui.client import ImagineBot

log = logging.getLogger(__name__)

NONE = discord.AllowedMentions.none()
PAGE_SIZE = 8
STATE_ICON = {"queued": "⏳", "in_progress": "⚙️", "complete": "✅", "failed": "❌", "cancelled": "🚫"}


async def parents_of(store: Store, jobs: list[Job]) -> dict[str, Job]:
    """The results these were made from (for their jump links); at most one page's worth."""
    found: dict[str, Job] = {}
    for parent_id in {j.parent_id for j in jobs if j.parent_id}:
        parent = await store.get_job(parent_id)
        if parent is not None:
            found[parent_id] = parent
    return found


def history_embed(jobs: list[Job], *, page: int, parents: dict[str, Job] | None = None) -> discord.Embed:
    embed = discord.Embed(title="Your recent requests", colour=EMBED_COLOUR)
    if not jobs:
        embed.description = "Nothing here yet." if page == 0 else "No older requests."
    for job in jobs:
        when = discord.utils.format_dt(job.created_at, style="R")
        gpu = f" · {job.gpu_seconds:.1f} GPU s" if job.gpu_seconds is not None else ""
        extra = [
            t for t in (grid_text(job), lineage_text(job, (parents or {}).get(job.parent_id or ""))) if t
        ]
        embed.add_field(
            name=f"{STATE_ICON.get(job.state.value, '')} {job.kind} `{short_id(job.id)}` · seed {job.seed}",
            value=f"{safe_text(job.prompt, 180)}\n{job.model} · {when}{gpu}"
            + "".join(f" · {t}" for t in extra),
            inline=False,
        )
    embed.set_footer(text=f"page {page + 1}")
    return embed


class HistoryPager(discord.ui.View):
    """Older/newer buttons for one member's ephemeral history; only they can press them."""

    def __init__(self, *, bot: ImagineBot, user_id: str, page: int = 0, has_more: bool = True) -> None:
        super().__init__(timeout=300)
        self.bot, self.user_id, self.page = bot, user_id, page
        self.newer.disabled = page == 0
        self.older.disabled = not has_more

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        return str(interaction.user.id) == self.user_id

    async def _show(self, interaction: discord.Interaction[Any], page: int) -> None:
        jobs = await self.bot.store.user_history(self.user_id, limit=PAGE_SIZE + 1, offset=page * PAGE_SIZE)
        view = HistoryPager(bot=self.bot, user_id=self.user_id, page=page, has_more=len(jobs) > PAGE_SIZE)
        parents = await parents_of(self.bot.store, jobs[:PAGE_SIZE])
        embed = history_embed(jobs[:PAGE_SIZE], page=page, parents=parents)
        await interaction.response.edit_message(embed=embed, view=view)

    @discord.ui.button(label="Newer", emoji="◀️")
    async def newer(self, interaction: discord.Interaction[Any], button: discord.ui.Button[Any]) -> None:
        await self._show(interaction, max(0, self.page - 1))

    @discord.ui.button(label="Older", emoji="▶️")
    async def older(self, interaction: discord.Interaction[Any], button: discord.ui.Button[Any]) -> None:
        await self._show(interaction, self.page + 1)


class Member(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="history")
    async def history(self, interaction: discord.Interaction[Any]) -> None:
        """Your recent requests with their seeds (only you can see this)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        user_id = str(interaction.user.id)
        jobs = await self.bot.store.user_history(user_id, limit=PAGE_SIZE + 1, offset=0)
        view = HistoryPager(bot=self.bot, user_id=user_id, page=0, has_more=len(jobs) > PAGE_SIZE)
        parents = await parents_of(self.bot.store, jobs[:PAGE_SIZE])
        embed = history_embed(jobs[:PAGE_SIZE], page=0, parents=parents)
        await interaction.followup.send(embed=embed, view=view, ephemeral=True, allowed_mentions=NONE)

    @app_commands.command(name="info")
    async def info(self, interaction: discord.Interaction[Any]) -> None:
        """Models, GPU and queue health."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        health = await self.bot.health()
        embed = discord.Embed(title="Bot status", colour=EMBED_COLOUR)
        embed.add_field(
            name="Models", value=", ".join(health.get("models_loaded") or []) or "none loaded yet"
        )
        embed.add_field(name="Device", value=str(health.get("device") or "unknown"))
        snap = self.bot.queue.snapshot()
        running = ", ".join(f"`{short_id(e.job.id)}` ({e.job.kind})" for e in snap.running[:5]) or "idle"
        embed.add_field(
            name="Queue",
            value=f"{len(snap.queued)} waiting · {running}" + (" · paused" if snap.paused else ""),
        )
        embed.add_field(
            name="Store", value="ok" if health.get("store_ok") else "unreachable (requests are buffered)"
        )
        embed.add_field(name="Worker", value="alive" if health.get("worker_alive") else "down")
        lines = [
            f"`{w.id}` {w.device} · {'busy' if w.busy else 'idle'} · {w.jobs_done} done"
            + (f" · batch of {w.batch_size}" if w.busy and w.batch_size > 1 else "")
            + (f" · beat {discord.utils.format_dt(w.last_heartbeat, style='R')}" if w.last_heartbeat else "")
            + (f"\n  speed-ups: {w.tuning}" if w.tuning else "")
            for w in health.get("workers") or []
        ]
        if lines:
            embed.add_field(name="GPU workers", value="\n".join(lines)[:1000], inline=False)
        embed.add_field(name="Discord latency", value=f"{self.bot.latency * 1000:.0f} ms")
        if health.get("problems"):
            embed.add_field(
                name="Problems", value="\n".join(map(str, health["problems"]))[:1000], inline=False
            )
        embed.set_footer(text=f"up {duration(self.bot.uptime_s)}")
        await interaction.followup.send(embed=embed, ephemeral=True, allowed_mentions=NONE)

    @app_commands.command(name="help")
    async def help(self, interaction: discord.Interaction[Any]) -> None:
        """How to use the bot."""
        s = self.bot.settings
        text = (
            "**/imagine** `prompt` — a picture. Options: negative_prompt, seed, steps, guidance, aspect or "
            "width/height, model.\n"
            "**/video** `prompt` — a short clip (each model has its own frame range). Options: "
            "negative_prompt, seed, steps, guidance, frames, fps, model, image (a picture to animate).\n"
            "**/queue status** — where your jobs are · **/queue cancel** — take one back\n"
            "**/history** — your requests and their seeds · **/info** — models and queue health\n"
            f"You can have {s.max_queued_per_user} jobs waiting at once. The same seed and settings give the "
            "same result; **Reroll** tries a new seed; **Animate** turns a picture into a clip."
        )
        if self.bot.invite_url:
            text += (
                f"\nAdd me to another server: <{self.bot.invite_url}> (I need "
                + ", ".join(n.name for n in REQUIRED)
                + " in the channels I'm used in)."
            )
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NONE)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Member(bot))
