"""The rules every prompt passes before it is queued, whichever way it comes in.

One :class:`Moderator` serves the Discord commands and the REST API alike: the bot-wide
blocklist (``PROMPT_BLOCKLIST``) applies everywhere, and a request made inside a server also
passes that server's pause, channel allow-list, NSFW-only mode and blocklist. Bans, quotas and queue
limits are the queue's (:mod:`bot.core.queue.limits`), which every way in goes through too.

Each rule can be tested without Discord. Every refusal is a `UserError` whose message tells
the member what happened without leaking the blocklist itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from bot.core.jobs import Job
from bot.core.store.base import GuildSettings, Store
from generation.errors import InvalidRequest, UserError

log = logging.getLogger(__name__)

REGEX_PREFIX = "re:"
MAX_PATTERN_LENGTH = 200


class ChannelNotAllowed(UserError):
    code = "channel_not_allowed"


class PromptBlocked(UserError):
    code = "prompt_blocked"


class GuildPaused(UserError):
    """This server's admins paused the bot here (`/admin pause`); other servers are served as usual."""

    code = "paused"


@dataclass(frozen=True)
class RequestContext:
    """Who asks and where, as plain data (no discord objects)."""

    user_id: str
    guild_id: str | None
    channel_id: str | None
    channel_is_nsfw: bool = False


def validate_pattern(entry: str) -> str:
    """Normalise a blocklist entry; `re:` entries must compile. Raises InvalidRequest otherwise."""
    entry = entry.strip()
    if not entry:
        raise InvalidRequest("A blocklist entry cannot be empty.")
    if len(entry) > MAX_PATTERN_LENGTH:
        raise InvalidRequest(f"A blocklist entry can be at most {MAX_PATTERN_LENGTH} characters.")
    if entry.startswith(REGEX_PREFIX):
        try:
            re.compile(entry[len(REGEX_PREFIX) :], re.IGNORECASE)
        except re.error as exc:
            raise InvalidRequest(f"That regular expression is invalid: {exc}.") from None
        return entry
    return entry.lower()


@lru_cache(maxsize=256)
def _compile(entry: str) -> re.Pattern[str]:
    if entry.startswith(REGEX_PREFIX):
        return re.compile(entry[len(REGEX_PREFIX) :], re.IGNORECASE)
    # plain words match whole words only, so "ass" does not block "class"
    return re.compile(rf"(?<!\w){re.escape(entry)}(?!\w)", re.IGNORECASE)


def blocked_by(text: str, blocklist: list[str]) -> str | None:
    """The first blocklist entry that matches `text`, if any."""
    for entry in blocklist:
        try:
            if _compile(entry).search(text):
                return entry
        except re.error:  # stored before validation existed: ignore, don't crash a command
            log.warning("ignoring invalid blocklist entry %r", entry)
    return None


NSFW_BLACKOUT, NSFW_SPOILER, NSFW_REFUSE = "blackout", "spoiler", "refuse"


def nsfw_action(policy: str, *, channel_is_nsfw: bool) -> str:
    """What happens to this request's picture if the safety checker flags it, under a server's
    `nsfw_policy`: a spoiler only in an age-restricted channel (blacked out elsewhere); an unknown
    or missing policy blacks it out, as diffusers does by default."""
    if policy == NSFW_SPOILER:
        return NSFW_SPOILER if channel_is_nsfw else NSFW_BLACKOUT
    return NSFW_REFUSE if policy == NSFW_REFUSE else NSFW_BLACKOUT


def refused_as_nsfw(job: Job, result: Any) -> bool:
    """The picture was flagged and the server refuses flagged pictures: it is not posted, and its
    GPU time is not charged to the member, so trying another seed costs them nothing."""
    return job.nsfw_action == NSFW_REFUSE and bool(getattr(result, "nsfw_detected", False))


class Moderator:
    """Applies the bot-wide blocklist, and inside a server its pause, channels, NSFW-only mode and
    blocklist."""

    def __init__(self, *, store: Store, blocklist: Sequence[str] = ()) -> None:
        self._store = store
        self._blocklist = list(blocklist)

    async def nsfw_action(self, ctx: RequestContext) -> str:
        """This request's `Job.nsfw_action`, from its server's policy and channel."""
        if ctx.guild_id is None:
            return NSFW_BLACKOUT
        policy = (await self._store.get_guild_settings(ctx.guild_id)).nsfw_policy
        return nsfw_action(policy, channel_is_nsfw=ctx.channel_is_nsfw)

    async def check(self, ctx: RequestContext, *, prompt: str, negative_prompt: str | None) -> None:
        """Raise the UserError to show if the request may not be queued here."""
        self._check_words(self._blocklist, ctx, prompt, negative_prompt, owner="this bot")
        if ctx.guild_id is None:
            return
        guild = await self._store.get_guild_settings(ctx.guild_id)
        if guild.paused:
            raise GuildPaused(
                "The admins of this server have paused the bot here for now; please try again later."
            )
        self._check_channel(guild, ctx)
        self._check_words(guild.blocklist, ctx, prompt, negative_prompt, owner="this server")

    @staticmethod
    def _check_words(
        blocklist: list[str], ctx: RequestContext, prompt: str, negative_prompt: str | None, *, owner: str
    ) -> None:
        # the negative prompt is shown publicly in the result embed, so it is checked too
        entry = blocked_by(prompt, blocklist) or blocked_by(negative_prompt or "", blocklist)
        if entry is not None:
            log.info("prompt from %s blocked (%s, guild %s)", ctx.user_id, owner, ctx.guild_id)
            raise PromptBlocked(f"Your prompt contains a word or phrase {owner} does not allow.")

    @staticmethod
    def _check_channel(guild: GuildSettings, ctx: RequestContext) -> None:
        if guild.allowed_channels and ctx.channel_id not in guild.allowed_channels:
            mentions = ", ".join(f"<#{c}>" for c in guild.allowed_channels[:10])
            raise ChannelNotAllowed(f"The bot can only be used in: {mentions}.")
        if guild.limits.get("nsfw_only") and not ctx.channel_is_nsfw:
            raise ChannelNotAllowed("On this server the bot can only be used in age-restricted channels.")
