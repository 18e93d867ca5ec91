"""The discord.py client: cogs, persistent buttons, command sync, one error handler.

Everything it needs is handed in by the launcher (settings, store, queue, registry), so
tests build it the same way production does. A cog that fails to load is logged and the
rest of the bot keeps working.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.core import metrics
from bot.core.jobs import Job
from bot.core.moderation import Moderator
from bot.core.queue import JobQueue
from bot.core.store.base import AuditEntry, Store
from bot.discord_ui.actions import Actions
from bot.discord_ui.delivery import DiscordDelivery
from bot.discord_ui.error_replies import reply_for
from bot.discord_ui.payloads import payload_problem
from bot.discord_ui.permissions import invite_url
from bot.discord_ui.views import DYNAMIC_ITEMS
from bot.settings import Settings
from generation.models import ModelSpec

log = logging.getLogger(__name__)

COGS = (
    "bot.discord_ui.cogs.generate",
    "bot.discord_ui.cogs.queue",
    "bot.discord_ui.cogs.member",
    "bot.discord_ui.cogs.defaults",
    "bot.discord_ui.cogs.admin",
    "bot.discord_ui.cogs.upscale",
)
NONE = discord.AllowedMentions.none()
MAX_MESSAGE_CHARS = 2000


class ImagineTree(app_commands.CommandTree["ImagineBot"]):
    async def interaction_check(self, interaction: discord.Interaction[Any], /) -> bool:
        """Refuse, politely, a command payload Discord's client would never send (see .payloads)."""
        kind = interaction.type
        if kind not in (discord.InteractionType.application_command, discord.InteractionType.autocomplete):
            return True
        data = interaction.data if isinstance(interaction.data, dict) else {}
        problem = payload_problem(self, data, autocomplete=kind is discord.InteractionType.autocomplete)
        if problem is None:
            return True
        log.warning(
            "interaction %s: refused a malformed /%s payload: %s", interaction.id, data.get("name"), problem
        )
        if kind is discord.InteractionType.application_command:
            await self.client.reply_privately(
                interaction,
                f"I can't run this command: {problem}. Please pick the options Discord offers "
                "(if it keeps happening, reload Discord: its copy of the command may be out of date).",
            )
        return False

    async def on_error(
        self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError
    ) -> None:
        where = f"/{getattr(interaction.command, 'qualified_name', '?')} (interaction {interaction.id})"
        text = reply_for(error, where=where)
        if text is not None:
            await self.client.reply_privately(interaction, text)


class ImagineBot(commands.Bot):
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        queue: JobQueue,
        registry: dict[str, ModelSpec],
        link_for: Callable[[Job], str] | None = None,
        health: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        intents = discord.Intents.none()
        intents.guilds = True  # channel and role lookups; no message content, no members intent
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            tree_cls=ImagineTree,
            allowed_mentions=NONE,
            help_command=None,
        )
        self.settings = settings
        self.store = store
        self.queue = queue
        self.registry = registry
        self.moderator = Moderator(store=store, blocklist=settings.prompt_blocklist)
        self.actions = Actions(self)
        self.delivery = DiscordDelivery(bot=self, link_for=link_for)
        self._health = health
        self._started = time.monotonic()
        self._invite_logged = False

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self._started

    async def setup_hook(self) -> None:
        for name in COGS:
            try:
                await self.load_extension(name)
            except Exception:
                log.exception("cog %s failed to load; the rest of the bot keeps running", name)
        self.add_dynamic_items(*DYNAMIC_ITEMS)
        self.queue.add_listener(self.delivery)
        if not self.queue.started:
            # started only now that delivery listens, so results that finished before a
            # restart (or finish while we connect) are posted, not dropped
            await self.queue.start()
        await self.sync_commands()

    async def sync_commands(self) -> None:
        if self.settings.dev_guild_id:
            guild = discord.Object(self.settings.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
        else:
            synced = await self.tree.sync()
        log.info("synced %d application commands", len(synced))

    @property
    def invite_url(self) -> str | None:
        """The link that adds this bot to a server with exactly the permissions it needs."""
        return invite_url(self.application_id) if self.application_id else None

    async def on_ready(self) -> None:
        log.info(
            "connected as %s (%s) to %d guild(s)", self.user, getattr(self.user, "id", "?"), len(self.guilds)
        )
        if not self._invite_logged and self.invite_url:
            self._invite_logged = True  # on_ready runs again after every reconnect
            log.info("invite the bot to a server with: %s", self.invite_url)
        metrics.DISCORD_LATENCY.set(self.latency if self.latency == self.latency else 0.0)

    async def on_socket_event_type(self, event_type: str) -> None:
        if event_type == "HEARTBEAT_ACK" or event_type == "RESUMED":
            metrics.DISCORD_LATENCY.set(self.latency)

    # -- shared helpers for cogs and views ---------------------------------------------------------
    def is_admin(self, interaction: discord.Interaction[Any]) -> bool:
        perms = getattr(interaction, "permissions", None)
        if perms is not None and (perms.manage_guild or perms.administrator):
            return True
        role = self.settings.admin_role
        if role:
            for r in getattr(interaction.user, "roles", []):
                if str(r.id) == role or r.name == role:
                    return True
        return False

    async def audit(
        self,
        interaction: discord.Interaction[Any],
        *,
        action: str,
        target: str | None = None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        await self.store.add_audit(
            AuditEntry(
                actor_id=str(interaction.user.id),
                actor_name=str(interaction.user),
                action=action,
                target=target,
                reason=reason,
                guild_id=str(interaction.guild_id) if interaction.guild_id else None,
                details=details or {},
            )
        )
        log.info("audit: %s by %s target=%s", action, interaction.user.id, target)

    async def reply_privately(self, interaction: discord.Interaction[Any], text: str) -> None:
        if len(text) > MAX_MESSAGE_CHARS:  # Discord refuses longer messages: the member would get nothing
            text = text[: MAX_MESSAGE_CHARS - 1] + "…"
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True, allowed_mentions=NONE)
            else:
                await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NONE)
        except discord.HTTPException:
            log.warning("could not send an error reply for interaction %s", interaction.id, exc_info=True)

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        log.exception("unhandled error in %s", event_method)

    async def health(self) -> dict[str, Any]:
        if self._health is None:
            return {}
        return await self._health()
