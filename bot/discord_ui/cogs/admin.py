"""/admin …: moderation for server owners. Every action lands in the audit log.

Gated in `interaction_check` (Manage Server, or the role named by `ADMIN_ROLE`) rather than
with `default_permissions`, so members holding only the configured admin role still see and
can use the commands.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.jobs import utcnow
from bot.core.moderation import validate_pattern
from bot.discord_ui.cogs.defaults import (
    ASPECT_CHOICES,
    DESCRIBE,
    CountOpt,
    GuidanceOpt,
    NegativeOpt,
    StepsOpt,
    describe_values,
    image_models,
    option_values,
    save_defaults,
    video_models,
)
from bot.discord_ui.formatting import EMBED_COLOUR, safe_text
from generation.errors import InvalidRequest, UserError

if TYPE_CHECKING:
    from bot.discord_ui.client import ImagineBot

log = logging.getLogger(__name__)

NONE = discord.AllowedMentions.none()
SERVER, EVERYWHERE = "server", "everywhere"
SCOPE_HELP = "This server (default), or every server (the bot's owner only)"
SCOPES = [
    app_commands.Choice(name="this server", value=SERVER),
    app_commands.Choice(name="every server (the bot's owner only)", value=EVERYWHERE),
]
NSFW_CHOICES = [
    app_commands.Choice(name="black them out (default)", value="blackout"),
    app_commands.Choice(name="spoilers in age-restricted channels, blacked out elsewhere", value="spoiler"),
    app_commands.Choice(name="refuse them; the member's reroll is free", value="refuse"),
]


class NotAdmin(app_commands.CheckFailure):
    """Shown as: you need Manage Server or the admin role."""


class Admin(commands.GroupCog, group_name="admin", group_description="Moderate the image and video bot"):
    blocklist = app_commands.Group(
        name="blocklist", description="Words or regular expressions refused in prompts"
    )
    channels = app_commands.Group(name="channels", description="Where the bot may be used")

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        if not self.bot.is_admin(interaction):
            raise NotAdmin("You need the Manage Server permission or the bot's admin role for this.")
        return True

    async def _done(self, interaction: discord.Interaction[Any], text: str) -> None:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True, allowed_mentions=NONE)
        else:
            await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NONE)

    def _guild(self, interaction: discord.Interaction[Any]) -> str:
        if interaction.guild_id is None:
            raise InvalidRequest("Admin commands work inside a server.")
        return str(interaction.guild_id)

    async def _purge(self, interaction: discord.Interaction[Any], *, user_id: str | None) -> int:
        """Cancel queued (not running) jobs, everyone's or one member's; returns how many."""
        snap = self.bot.queue.snapshot()
        count = 0
        for entry in snap.queued:
            if user_id is None or entry.job.user_id == user_id:
                with contextlib.suppress(UserError):  # finished meanwhile: nothing to cancel
                    await self.bot.queue.cancel(
                        entry.job.id, by_user_id=str(interaction.user.id), is_admin=True
                    )
                    count += 1
        return count

    # -- bans ---------------------------------------------------------------------------------------
    def _ban_target(self, user: discord.User | None, api_key: str | None) -> tuple[str, str]:
        """The store's user id and a label: a member, or a REST API key's owner (`api:<name>`)."""
        if (user is None) == (api_key is None):
            raise InvalidRequest("Name either a member or an API key.")
        if user is not None:
            return str(user.id), user.mention
        assert api_key is not None
        if api_key not in self.bot.settings.api_keys:
            known = ", ".join(sorted(self.bot.settings.api_keys)) or "none configured"
            raise InvalidRequest(f"No API key is named `{safe_text(api_key, 60)}` (known: {known}).")
        return f"api:{api_key}", f"API key `{api_key}`"

    async def _set_ban(
        self,
        interaction: discord.Interaction[Any],
        user: discord.User | None,
        api_key: str | None,
        reason: str | None,
        *,
        banned: bool,
    ) -> tuple[str, str]:
        """What /admin ban and /admin unban share: the target named and its ban state stored."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        target, label = self._ban_target(user, api_key)
        await self.bot.store.set_ban(target, banned=banned, reason=reason, by=str(interaction.user.id))
        return target, label

    @app_commands.command(name="ban")
    @app_commands.describe(
        user="Member to ban from the bot",
        api_key="Or: the name of a REST API key (from API_KEYS) to ban",
        reason="Shown to them when they try",
    )
    async def ban(
        self,
        interaction: discord.Interaction[Any],
        user: discord.User | None = None,
        api_key: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Stop a member (or an API key) from using the bot; their queued jobs are cancelled."""
        target, label = await self._set_ban(interaction, user, api_key, reason, banned=True)
        cancelled = await self._purge(interaction, user_id=target)
        await self.bot.audit(
            interaction, action="ban", target=target, reason=reason, details={"cancelled": cancelled}
        )
        await self._done(interaction, f"Banned {label}; {cancelled} queued job(s) cancelled.")

    @app_commands.command(name="unban")
    @app_commands.describe(
        user="Member to allow again",
        api_key="Or: the name of a REST API key",
        reason="Why (for the audit log)",
    )
    async def unban(
        self,
        interaction: discord.Interaction[Any],
        user: discord.User | None = None,
        api_key: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Allow a banned member (or API key) to use the bot again."""
        target, label = await self._set_ban(interaction, user, api_key, reason, banned=False)
        await self.bot.audit(interaction, action="unban", target=target, reason=reason)
        await self._done(interaction, f"Unbanned {label}.")

    # -- blocklist ------------------------------------------------------------------------------------
    @blocklist.command(name="add")
    @app_commands.describe(entry="A word, or `re:` followed by a regular expression")
    async def blocklist_add(
        self, interaction: discord.Interaction[Any], entry: app_commands.Range[str, 1, 200]
    ) -> None:
        """Refuse prompts that contain this word or match this pattern."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild_id = self._guild(interaction)
        entry = validate_pattern(entry)
        current = await self.bot.store.get_guild_settings(guild_id)
        if entry not in current.blocklist:
            await self.bot.store.update_guild_settings(guild_id, blocklist=[*current.blocklist, entry])
        await self.bot.audit(interaction, action="blocklist_add", target=entry)
        await self._done(interaction, f"Added `{safe_text(entry, 200)}` to the blocklist.")

    @blocklist.command(name="remove")
    @app_commands.describe(entry="The entry exactly as listed")
    async def blocklist_remove(self, interaction: discord.Interaction[Any], entry: str) -> None:
        """Allow a blocklisted word or pattern again."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild_id = self._guild(interaction)
        current = await self.bot.store.get_guild_settings(guild_id)
        normalised = entry.strip() if entry.strip().startswith("re:") else entry.strip().lower()
        if normalised not in current.blocklist:
            raise InvalidRequest(f"`{safe_text(entry, 200)}` is not on the blocklist.")
        await self.bot.store.update_guild_settings(
            guild_id, blocklist=[e for e in current.blocklist if e != normalised]
        )
        await self.bot.audit(interaction, action="blocklist_remove", target=normalised)
        await self._done(interaction, f"Removed `{safe_text(normalised, 200)}` from the blocklist.")

    @blocklist.command(name="list")
    async def blocklist_list(self, interaction: discord.Interaction[Any]) -> None:
        """Show the blocklist."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        current = await self.bot.store.get_guild_settings(self._guild(interaction))
        body = "\n".join(f"• `{safe_text(e, 200)}`" for e in current.blocklist) or "The blocklist is empty."
        await self._done(interaction, body[:1900])

    # -- queue control ----------------------------------------------------------------------------------
    async def _everywhere(self, interaction: discord.Interaction[Any], scope: str) -> bool:
        """Whether to act on every server; only the bot's owner may (the Discord application's owner
        or team), since one server's admins must not stop the bot for the others."""
        if scope != EVERYWHERE:
            return False
        if not await self.bot.is_owner(interaction.user):
            raise InvalidRequest(
                "Only the bot's owner can pause or resume it on every server. "
                "Leave `scope` empty to pause or resume it on this server."
            )
        return True

    @app_commands.command(name="defaults")
    @app_commands.describe(server="Save for the whole server instead of this channel", **DESCRIBE)
    @app_commands.choices(aspect=ASPECT_CHOICES)
    @app_commands.autocomplete(image_model=image_models, video_model=video_models)
    async def defaults(
        self,
        interaction: discord.Interaction[Any],
        server: bool = False,
        image_model: str | None = None,
        video_model: str | None = None,
        aspect: app_commands.Choice[str] | None = None,
        steps: StepsOpt | None = None,
        guidance: GuidanceOpt | None = None,
        negative_prompt: NegativeOpt | None = None,
        count: CountOpt | None = None,
        spoiler: bool | None = None,
        reset: bool = False,
    ) -> None:
        """Show or set this channel's (or the server's) defaults; a member's own defaults win."""
        scope, owner = (
            ("guild", self._guild(interaction)) if server else ("channel", str(interaction.channel_id))
        )
        given = option_values(locals())
        saved = await save_defaults(self.bot, scope, owner, given, reset=reset)
        if reset or any(v is not None for v in given.values()):
            await self.bot.audit(
                interaction, action="defaults", target=f"{scope}:{owner}", details=saved or {}
            )
        where = "the server" if server else f"<#{owner}>"
        await self._done(interaction, f"Defaults for {where}: {describe_values(saved)}.")

    @app_commands.command(name="pause")
    @app_commands.describe(scope=SCOPE_HELP, reason="Why (for the audit log)")
    @app_commands.choices(scope=SCOPES)
    async def pause(
        self, interaction: discord.Interaction[Any], scope: str = SERVER, reason: str | None = None
    ) -> None:
        """Refuse new requests on this server (or pause the whole queue: the bot's owner only)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        if await self._everywhere(interaction, scope):
            await self.bot.queue.pause(by=str(interaction.user.id))
            text = "Paused on every server: the running job finishes; nothing new starts until resumed."
        else:
            await self.bot.store.update_guild_settings(self._guild(interaction), paused=True)
            text = (
                "Paused on this server: new requests here are refused politely until `/admin resume`. "
                "Requests already queued still run (`/admin purge` cancels them); "
                "other servers are not affected."
            )
        await self.bot.audit(interaction, action="pause", reason=reason, details={"scope": scope})
        await self._done(interaction, text)

    @app_commands.command(name="resume")
    @app_commands.describe(scope=SCOPE_HELP)
    @app_commands.choices(scope=SCOPES)
    async def resume(self, interaction: discord.Interaction[Any], scope: str = SERVER) -> None:
        """Take requests again on this server (or everywhere, after a pause of every server)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        if await self._everywhere(interaction, scope):
            await self.bot.queue.resume(by=str(interaction.user.id))
            text = "Resumed on every server."
        else:
            await self.bot.store.update_guild_settings(self._guild(interaction), paused=False)
            text = "Resumed on this server."
            if self.bot.queue.paused:
                text += " The bot's owner has also paused it on every server; that pause still holds."
        await self.bot.audit(interaction, action="resume", details={"scope": scope})
        await self._done(interaction, text)

    # -- server settings ------------------------------------------------------------------------------
    @app_commands.command(name="gallery")
    @app_commands.describe(public="Show this server's prompts and results on the bot's public status page")
    async def gallery(self, interaction: discord.Interaction[Any], public: bool) -> None:
        """Choose whether this server's results appear on the bot's public status page."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        await self.bot.store.update_guild_settings(self._guild(interaction), gallery_public=public)
        await self.bot.audit(interaction, action="gallery", details={"public": public})
        where = self.bot.settings.public_url
        await self._done(
            interaction,
            f"This server's prompts and results now appear on the public status page ({where})."
            if public
            else "This server's prompts and results no longer appear on the public status page.",
        )

    @app_commands.command(name="nsfw")
    @app_commands.describe(policy="What happens when the safety checker flags a picture")
    @app_commands.choices(policy=NSFW_CHOICES)
    async def nsfw(self, interaction: discord.Interaction[Any], policy: str) -> None:
        """Choose what happens when the safety checker flags a picture on this server."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        await self.bot.store.update_guild_settings(self._guild(interaction), nsfw_policy=policy)
        await self.bot.audit(interaction, action="nsfw_policy", target=policy)
        chosen = next(c.name for c in NSFW_CHOICES if c.value == policy)
        await self._done(interaction, f"Pictures the safety checker flags: {chosen}. Members are told which.")

    @app_commands.command(name="purge")
    @app_commands.describe(
        user="Only this member's jobs (empty = everyone's)", reason="Why (for the audit log)"
    )
    async def purge(
        self,
        interaction: discord.Interaction[Any],
        user: discord.User | None = None,
        reason: str | None = None,
    ) -> None:
        """Cancel all queued jobs, or one member's."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        count = await self._purge(interaction, user_id=str(user.id) if user else None)
        await self.bot.audit(
            interaction,
            action="purge",
            target=str(user.id) if user else None,
            reason=reason,
            details={"cancelled": count},
        )
        await self._done(interaction, f"Cancelled {count} queued job(s).")

    @app_commands.command(name="quota")
    @app_commands.describe(
        user="Member whose limits to set",
        daily_gpu_seconds="GPU seconds per day (empty = server default)",
        max_queued="Jobs waiting at once (empty = server default)",
    )
    async def quota(
        self,
        interaction: discord.Interaction[Any],
        user: discord.User,
        daily_gpu_seconds: app_commands.Range[float, 0, 86400] | None = None,
        max_queued: app_commands.Range[int, 0, 1000] | None = None,
    ) -> None:
        """Set a member's own daily GPU time and queued-job limits."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        record = await self.bot.store.set_user_quota(
            str(user.id), max_queued=max_queued, daily_gpu_seconds=daily_gpu_seconds
        )
        await self.bot.audit(
            interaction,
            action="quota",
            target=str(user.id),
            details={"daily_gpu_seconds": daily_gpu_seconds, "max_queued": max_queued},
        )
        s = self.bot.settings
        gpu = (
            record.daily_gpu_seconds if record.daily_gpu_seconds is not None else s.daily_gpu_seconds_per_user
        )
        queued = record.max_queued if record.max_queued is not None else s.max_queued_per_user
        await self._done(
            interaction, f"{user.mention}: {gpu:.0f} GPU s per day, {queued} job(s) waiting at once."
        )

    # -- privacy ------------------------------------------------------------------------------------------
    @app_commands.command(name="forget")
    @app_commands.describe(
        user="Member whose request log and result files to delete",
        reason="Why, e.g. 'their request' (for the audit log)",
    )
    async def forget(
        self, interaction: discord.Interaction[Any], user: discord.User, reason: str | None = None
    ) -> None:
        """Delete a member's requests and result files (their data); bans and quotas stay."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        target = str(user.id)
        cancelled = await self._purge(interaction, user_id=target)
        deleted = await self.bot.store.delete_user_data(target)
        self.bot.queue.forget_usage(target)
        await self.bot.audit(
            interaction,
            action="forget",
            target=target,
            reason=reason,
            details={"deleted": deleted, "cancelled": cancelled},
        )
        await self._done(
            interaction,
            f"Deleted {deleted} request(s) of {user.mention} with their files; "
            f"{cancelled} queued job(s) cancelled. Results already posted stay in their channels.",
        )

    # -- channels -----------------------------------------------------------------------------------------
    @channels.command(name="allow")
    async def channels_allow(
        self, interaction: discord.Interaction[Any], channel: discord.TextChannel
    ) -> None:
        """Allow the bot in this channel (once any channel is allowed, only allowed ones work)."""
        await self._set_channel(interaction, channel, allow=True)

    @channels.command(name="disallow")
    async def channels_disallow(
        self, interaction: discord.Interaction[Any], channel: discord.TextChannel
    ) -> None:
        """Remove a channel from the allow-list."""
        await self._set_channel(interaction, channel, allow=False)

    async def _set_channel(
        self, interaction: discord.Interaction[Any], channel: discord.abc.GuildChannel, *, allow: bool
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild_id = self._guild(interaction)
        current = await self.bot.store.get_guild_settings(guild_id)
        allowed = [c for c in current.allowed_channels if c != str(channel.id)]
        if allow:
            allowed.append(str(channel.id))
        await self.bot.store.update_guild_settings(guild_id, allowed_channels=allowed)
        await self.bot.audit(
            interaction, action="channel_allow" if allow else "channel_disallow", target=str(channel.id)
        )
        scope = ", ".join(f"<#{c}>" for c in allowed) or "every channel"
        await self._done(interaction, f"The bot may now be used in: {scope}.")

    @channels.command(name="nsfw_only")
    @app_commands.describe(enabled="Only answer in age-restricted channels")
    async def channels_nsfw_only(self, interaction: discord.Interaction[Any], enabled: bool) -> None:
        """Restrict the bot to age-restricted (NSFW) channels."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild_id = self._guild(interaction)
        current = await self.bot.store.get_guild_settings(guild_id)
        await self.bot.store.update_guild_settings(guild_id, limits={**current.limits, "nsfw_only": enabled})
        await self.bot.audit(interaction, action="nsfw_only", details={"enabled": enabled})
        await self._done(interaction, "NSFW-only mode " + ("on." if enabled else "off."))

    @channels.command(name="list")
    async def channels_list(self, interaction: discord.Interaction[Any]) -> None:
        """Show where the bot may be used."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        current = await self.bot.store.get_guild_settings(self._guild(interaction))
        scope = ", ".join(f"<#{c}>" for c in current.allowed_channels) or "every channel"
        nsfw = " (age-restricted channels only)" if current.limits.get("nsfw_only") else ""
        await self._done(interaction, f"Allowed: {scope}{nsfw}.")

    # -- reports ---------------------------------------------------------------------------------------------
    @app_commands.command(name="stats")
    @app_commands.describe(days="Period to report, in days")
    async def stats(
        self, interaction: discord.Interaction[Any], days: app_commands.Range[int, 1, 365] = 7
    ) -> None:
        """Jobs, GPU seconds, failures and top users over a period."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        since = utcnow() - timedelta(days=days)
        rows = await self.bot.store.model_stats(since=since)
        embed = discord.Embed(title=f"Last {days} day(s)", colour=EMBED_COLOUR)
        total_jobs = sum(r.jobs for r in rows)
        total_gpu = sum(r.gpu_seconds_total for r in rows)
        failed = sum(r.failed for r in rows)
        embed.description = f"**{total_jobs}** jobs · **{total_gpu:.0f}** GPU s · **{failed}** failed"
        for r in rows[:20]:
            embed.add_field(
                name=f"{r.model} ({r.kind})",
                value=f"{r.jobs} jobs · {r.complete} ok · {r.failed} failed · {r.cancelled} cancelled\n"
                f"avg {r.gpu_seconds_avg:.1f} GPU s",
            )
        # only this server's members: an admin of one server must not see another's
        top = await self.bot.store.top_users(since=since, limit=5, guild_id=self._guild(interaction))
        if top:
            embed.add_field(
                name="Top users",
                value="\n".join(f"<@{u.user_id}>: {u.jobs} jobs, {u.gpu_seconds:.0f} GPU s" for u in top),
                inline=False,
            )
        await interaction.followup.send(embed=embed, ephemeral=True, allowed_mentions=NONE)

    @app_commands.command(name="audit")
    @app_commands.describe(limit="How many entries")
    async def audit(
        self, interaction: discord.Interaction[Any], limit: app_commands.Range[int, 1, 25] = 10
    ) -> None:
        """Recent admin actions on this server."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        entries = await self.bot.store.list_audit(guild_id=self._guild(interaction), limit=limit)
        lines = [
            f"{discord.utils.format_dt(e.at, style='R')} <@{e.actor_id}> **{e.action}**"
            + (f" → `{safe_text(e.target, 60)}`" if e.target else "")
            + (f" — {safe_text(e.reason, 100)}" if e.reason else "")
            for e in entries
        ]
        await self._done(interaction, "\n".join(lines)[:1900] or "No admin actions yet.")


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Admin(bot))
