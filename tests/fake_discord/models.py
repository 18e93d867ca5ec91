"""The world the fake Discord serves: users, roles, channels, members, guilds, and their payloads.

Tests build these with keyword arguments (ids are real-looking snowflakes handed out on
construction) and pass guilds to `FakeDiscord`; the gateway and REST layers only call
`to_payload()`, so the JSON shapes Discord API v10 uses live in one place.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from enum import IntFlag
from typing import ClassVar

log = logging.getLogger(__name__)

DISCORD_EPOCH_MS = 1_420_070_400_000
MIB = 1024 * 1024
# What Discord allows a bot per upload by boost tier (discord.py's Guild._PREMIUM_GUILD_LIMITS agrees).
FILESIZE_LIMIT_BY_TIER = {0: 10 * MIB, 1: 10 * MIB, 2: 50 * MIB, 3: 100 * MIB}

_snowflake_lock = threading.Lock()
_snowflake_counter = itertools.count()


def snowflake() -> int:
    """A unique, increasing id with Discord's layout, so discord.py's `created_at` is about now."""
    with _snowflake_lock:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return (ms << 22) | (next(_snowflake_counter) & 0x3FFFFF)


def iso_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


class Perm(IntFlag):
    """Permission bits the bot is likely to check (Discord's numbering)."""

    CREATE_INSTANT_INVITE = 1 << 0
    KICK_MEMBERS = 1 << 1
    BAN_MEMBERS = 1 << 2
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    SEND_TTS_MESSAGES = 1 << 12
    USE_EXTERNAL_EMOJIS = 1 << 18
    MANAGE_ROLES = 1 << 28
    MANAGE_WEBHOOKS = 1 << 29
    USE_APPLICATION_COMMANDS = 1 << 31
    MODERATE_MEMBERS = 1 << 40
    SEND_MESSAGES_IN_THREADS = 1 << 38


ALL_PERMISSIONS = (1 << 51) - 1
EVERYONE_PERMISSIONS = (
    Perm.VIEW_CHANNEL
    | Perm.SEND_MESSAGES
    | Perm.EMBED_LINKS
    | Perm.ATTACH_FILES
    | Perm.READ_MESSAGE_HISTORY
    | Perm.ADD_REACTIONS
    | Perm.USE_EXTERNAL_EMOJIS
    | Perm.USE_APPLICATION_COMMANDS
    | Perm.CREATE_INSTANT_INVITE
)


@dataclass(eq=False)
class FakeUser:
    username: str = "member"
    id: int = field(default_factory=snowflake)
    global_name: str | None = None
    bot: bool = False

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def to_payload(self) -> dict:
        return {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }


@dataclass(eq=False)
class FakeRole:
    name: str
    permissions: int = 0
    id: int = field(default_factory=snowflake)
    position: int = 1
    managed: bool = False

    @property
    def mention(self) -> str:
        return f"<@&{self.id}>"

    def to_payload(self) -> dict:
        return {
            "id": str(self.id),
            "name": self.name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(int(self.permissions)),
            "managed": self.managed,
            "mentionable": False,
            "flags": 0,
        }


@dataclass
class Overwrite:
    """A channel permission overwrite for a role (type 0) or a member (type 1)."""

    id: int
    type: int
    allow: int = 0
    deny: int = 0

    ROLE: ClassVar[int] = 0
    MEMBER: ClassVar[int] = 1

    def to_payload(self) -> dict:
        return {"id": str(self.id), "type": self.type, "allow": str(self.allow), "deny": str(self.deny)}


class ChannelType:
    TEXT = 0
    DM = 1
    VOICE = 2
    CATEGORY = 4
    NEWS = 5


@dataclass(eq=False)
class FakeChannel:
    name: str = "general"
    id: int = field(default_factory=snowflake)
    type: int = ChannelType.TEXT
    nsfw: bool = False
    topic: str | None = None
    position: int = 0
    guild_id: int | None = None  # set when added to a guild
    recipient: FakeUser | None = None  # DM channels only
    overwrites: list[Overwrite] = field(default_factory=list)

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    def to_payload(self) -> dict:
        if self.type == ChannelType.DM:
            recipients = [self.recipient.to_payload()] if self.recipient else []
            return {"id": str(self.id), "type": self.type, "last_message_id": None, "recipients": recipients}
        payload: dict = {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id) if self.guild_id else None,
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [o.to_payload() for o in self.overwrites],
            "nsfw": self.nsfw,
            "parent_id": None,
        }
        if self.type in (ChannelType.TEXT, ChannelType.NEWS):
            payload.update(topic=self.topic, last_message_id=None, rate_limit_per_user=0)
        if self.type == ChannelType.VOICE:
            payload.update(bitrate=64000, user_limit=0, rtc_region=None)
        return payload


@dataclass(eq=False)
class FakeMember:
    user: FakeUser
    roles: list[FakeRole] = field(default_factory=list)
    nick: str | None = None
    joined_at: str = field(default_factory=iso_now)

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def mention(self) -> str:
        return self.user.mention

    def to_payload(self, *, permissions: int | None = None) -> dict:
        payload = {
            "user": self.user.to_payload(),
            "roles": [str(role.id) for role in self.roles],
            "nick": self.nick,
            "avatar": None,
            "joined_at": self.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }
        if permissions is not None:
            payload["permissions"] = str(permissions)
        return payload


@dataclass(eq=False)
class FakeGuild:
    """A guild; the @everyone role, an owner and a #general channel are made when not given."""

    name: str = "Fake Guild"
    id: int = field(default_factory=snowflake)
    channels: list[FakeChannel] = field(default_factory=list)
    roles: list[FakeRole] = field(default_factory=list)
    members: list[FakeMember] = field(default_factory=list)
    owner: FakeUser | None = None
    premium_tier: int = 0
    everyone_permissions: int = EVERYONE_PERMISSIONS
    preferred_locale: str = "en-US"

    def __post_init__(self) -> None:
        if not self.channels:
            self.channels.append(FakeChannel(name="general"))
        for position, channel in enumerate(self.channels):
            channel.guild_id = self.id
            channel.position = position
        self.everyone = FakeRole(
            name="@everyone", id=self.id, position=0, permissions=self.everyone_permissions
        )
        if self.owner is None:
            self.owner = FakeUser(username="owner")
        if self.member(self.owner.id) is None:
            self.members.append(FakeMember(user=self.owner))

    # lookups -----------------------------------------------------------------------------

    @property
    def filesize_limit(self) -> int:
        return FILESIZE_LIMIT_BY_TIER.get(self.premium_tier, FILESIZE_LIMIT_BY_TIER[0])

    @property
    def all_roles(self) -> list[FakeRole]:
        return [self.everyone, *self.roles]

    def channel(self, key: int | str | None = None) -> FakeChannel:
        """By id or name; the first channel when no key is given."""
        if key is None:
            return self.channels[0]
        for channel in self.channels:
            if key in (channel.id, channel.name):
                return channel
        raise KeyError(f"no channel {key!r} in guild {self.name}")

    def role(self, key: int | str) -> FakeRole:
        for role in self.all_roles:
            if key in (role.id, role.name):
                return role
        raise KeyError(f"no role {key!r} in guild {self.name}")

    def member(self, key: int | str) -> FakeMember | None:
        for member in self.members:
            if key in (member.user.id, member.user.username):
                return member
        return None

    # mutations the tests may use ---------------------------------------------------------

    def add_member(
        self, user: FakeUser | str, *, roles: list[FakeRole] | None = None, nick: str | None = None
    ) -> FakeMember:
        if isinstance(user, str):
            user = FakeUser(username=user)
        existing = self.member(user.id)
        if existing is not None:
            return existing
        member = FakeMember(user=user, roles=list(roles or []), nick=nick)
        self.members.append(member)
        return member

    def add_role(self, name: str, *, permissions: int = 0) -> FakeRole:
        role = FakeRole(name=name, permissions=permissions, position=len(self.roles) + 1)
        self.roles.append(role)
        return role

    def add_channel(self, name: str, *, nsfw: bool = False, type: int = ChannelType.TEXT) -> FakeChannel:
        channel = FakeChannel(name=name, nsfw=nsfw, type=type, guild_id=self.id, position=len(self.channels))
        self.channels.append(channel)
        return channel

    def permissions_of(self, member: FakeMember) -> int:
        """Guild-level permissions as Discord computes them (before channel overwrites)."""
        if self.owner is not None and member.user.id == self.owner.id:
            return ALL_PERMISSIONS
        value = int(self.everyone.permissions)
        for role in member.roles:
            value |= int(role.permissions)
        if value & Perm.ADMINISTRATOR:
            return ALL_PERMISSIONS
        return value

    def permissions_in(self, member: FakeMember, channel: FakeChannel) -> int:
        """Permissions in `channel`: Discord's overwrite order, then its implicit denials.

        Order (developers/topics/permissions, "Permission Overwrites"): @everyone deny/allow,
        role denies then allows, member deny/allow. Implicit: without View Channel nothing is
        left; without Send Messages, Mention Everyone, TTS, Attach Files and Embed Links go too.
        """
        base = self.permissions_of(member)
        if base == ALL_PERMISSIONS:
            return base
        by_id = {o.id: o for o in channel.overwrites}
        value = base
        everyone = by_id.get(self.id)
        if everyone is not None:
            value = (value & ~everyone.deny) | everyone.allow
        allow = deny = 0
        for role in member.roles:
            found = by_id.get(role.id)
            if found is not None and found.type == Overwrite.ROLE:
                allow, deny = allow | found.allow, deny | found.deny
        value = (value & ~deny) | allow
        own = by_id.get(member.id)
        if own is not None and own.type == Overwrite.MEMBER:
            value = (value & ~own.deny) | own.allow
        if not value & Perm.VIEW_CHANNEL:
            return 0
        if not value & Perm.SEND_MESSAGES:
            value &= ~(Perm.MENTION_EVERYONE | Perm.SEND_TTS_MESSAGES | Perm.ATTACH_FILES | Perm.EMBED_LINKS)
        return int(value)

    def set_member_permissions(self, member: FakeMember, channel: FakeChannel, permissions: int) -> None:
        """A member overwrite on `channel` that leaves `member` exactly `permissions` there."""
        base = self.permissions_of(member)
        channel.overwrites = [o for o in channel.overwrites if o.id != member.id]
        channel.overwrites.append(
            Overwrite(
                id=member.id,
                type=Overwrite.MEMBER,
                allow=int(permissions) & ~base,
                deny=base & ~int(permissions),
            )
        )

    # payloads ----------------------------------------------------------------------------

    def to_payload(self, *, include_members: list[FakeMember]) -> dict:
        """The full GUILD_CREATE / GET /guilds/{id} body."""
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": str(self.owner.id) if self.owner else None,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [role.to_payload() for role in self.all_roles],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": self.premium_tier,
            "premium_subscription_count": {0: 0, 1: 2, 2: 7, 3: 14}.get(self.premium_tier, 0),
            "preferred_locale": self.preferred_locale,
            "public_updates_channel_id": None,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "joined_at": iso_now(),
            "large": False,
            "unavailable": False,
            "member_count": len(self.members),
            "max_members": 500000,
            "voice_states": [],
            "members": [m.to_payload() for m in include_members],
            "channels": [c.to_payload() for c in self.channels],
            "threads": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }
