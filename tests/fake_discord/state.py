"""Everything the fake Discord remembers, and the one notifier tests wait on.

Gateway and REST handlers mutate this state and call `notify()`; test helpers call
`wait_until(predicate)`, which re-checks the predicate after each change instead of polling
with sleeps. Every REST call is recorded (`calls`), and armed faults (`FaultRule`) turn the
next matching calls into the errors Discord really sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .messages import FakeAttachment, FakeMessage
from .models import ChannelType, FakeChannel, FakeGuild, FakeMember, FakeUser, Perm, snowflake

if TYPE_CHECKING:
    from .interactions import FakeInteraction

log = logging.getLogger(__name__)

T = TypeVar("T")

RECHECK_S = 0.05
#: what a bot may do in a DM channel
DM_PERMISSIONS = (
    Perm.VIEW_CHANNEL | Perm.SEND_MESSAGES | Perm.EMBED_LINKS | Perm.ATTACH_FILES | Perm.READ_MESSAGE_HISTORY
)

DEFAULT_ERROR_MESSAGES = {
    10003: "Unknown Channel",
    10008: "Unknown Message",
    10015: "Unknown Webhook",
    10062: "Unknown interaction",
    40005: "Request entity too large",
    40060: "Interaction has already been acknowledged.",
    50001: "Missing Access",
    50006: "Cannot send an empty message",
    50013: "Missing Permissions",
    50027: "Invalid Webhook Token",
    50035: "Invalid Form Body",
}


@dataclass
class RecordedCall:
    """One REST request as the fake saw it, and what it answered."""

    method: str
    path: str  # without the /api/v10 prefix, e.g. "/channels/1/messages"
    query: dict[str, str]
    body: Any  # the JSON body, or multipart's payload_json
    files: list[tuple[str, int]]  # (filename, size) of uploaded files
    at: float  # time.monotonic()
    status: int = 0
    response: Any = None
    fault: FaultRule | None = None
    expected_invalid: bool = False  # a test sent it on purpose and took it back

    @property
    def invalid(self) -> bool:
        """Refused as a bad request by the fake's own checks (not by an injected fault)."""
        return self.status == 400 and self.fault is None

    def describe(self) -> str:
        body = json.dumps(self.body)[:300] if self.body is not None else "-"
        return f"{self.method} {self.path} {body} -> {self.status} {json.dumps(self.response)[:600]}"

    def __repr__(self) -> str:
        return f"<{self.method} {self.path} -> {self.status}{' (injected)' if self.fault else ''}>"


@dataclass
class Tally:
    """What every fake in this process was sent: for the suite's summary and per-test checks."""

    requests: int = 0
    invalid: list[RecordedCall] = field(default_factory=list)

    def unexpected_since(self, mark: int) -> list[RecordedCall]:
        return [c for c in self.invalid[mark:] if not c.expected_invalid]


TALLY = Tally()


@dataclass(eq=False)
class FaultRule:
    """Answer the next `times` matching calls with an error instead of serving them."""

    method: str
    path: re.Pattern[str]
    status: int
    code: int = 0
    message: str | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    retry_after: float = 0.05
    times: int | None = 1  # None: until cleared
    after_serving: bool = False  # serve the call, then answer with the error (the answer was lost)
    delay_s: float = 0.0  # wait this long before answering
    #: serve the call and answer it normally, but only once this is set (a slow answer from Discord)
    hold: asyncio.Event | None = None
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        return self.method in ("*", method.upper()) and self.path.search(path) is not None

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times

    def body(self) -> Any:
        if self.json is not None:
            return self.json
        if self.status == 429:
            return {
                "message": "You are being rate limited.",
                "retry_after": self.retry_after,
                "global": False,
            }
        message = self.message or DEFAULT_ERROR_MESSAGES.get(self.code) or f"{self.status}: injected fault"
        return {"message": message, "code": self.code}

    def response_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.status == 429:
            # discord.py takes a 429 without `Via` for a Cloudflare ban and gives up
            headers.setdefault("Via", "1.1 google")
            headers.setdefault("Retry-After", f"{self.retry_after:.3f}")
            headers.setdefault("X-RateLimit-Scope", "user")
        return headers


class Notifier:
    """Wake every waiter whenever the state changes; waiters re-check their own predicate.

    Waiters also re-check every RECHECK_S, for predicates that look at the bot's side too.
    """

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    def notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_until(
        self,
        predicate: Callable[[], T],
        *,
        timeout: float,
        describe: Callable[[], str],
    ) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(describe())
            waiter = loop.create_future()
            self._waiters.append(waiter)
            # the predicate may also read the bot's own state, which does not notify us
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, min(remaining, RECHECK_S))


@dataclass
class State:
    bot_user: FakeUser
    application_id: int
    token: str
    guilds: list[FakeGuild]
    http_base: str = ""
    messages: dict[int, FakeMessage] = field(default_factory=dict)
    interactions: dict[int, FakeInteraction] = field(default_factory=dict)
    global_commands: list[dict] = field(default_factory=list)
    guild_commands: dict[int, list[dict]] = field(default_factory=dict)
    command_ids: dict[tuple[int | None, int, str], int] = field(default_factory=dict)
    dm_channels: dict[int, FakeChannel] = field(default_factory=dict)
    calls: list[RecordedCall] = field(default_factory=list)
    faults: list[FaultRule] = field(default_factory=list)
    internal_errors: list[str] = field(default_factory=list)
    uploads: dict[int, FakeAttachment] = field(default_factory=dict)  # attachments sent as command options
    notifier: Notifier = field(default_factory=Notifier)

    def notify(self) -> None:
        self.notifier.notify()

    # lookups -----------------------------------------------------------------------------

    def guild(self, guild_id: int | None) -> FakeGuild | None:
        for guild in self.guilds:
            if guild.id == guild_id:
                return guild
        return None

    def channel(self, channel_id: int) -> FakeChannel | None:
        for guild in self.guilds:
            for channel in guild.channels:
                if channel.id == channel_id:
                    return channel
        return self.dm_channels.get(channel_id)

    def user(self, user_id: int) -> FakeUser | None:
        if user_id == self.bot_user.id:
            return self.bot_user
        for guild in self.guilds:
            member = guild.member(user_id)
            if member is not None:
                return member.user
        for channel in self.dm_channels.values():
            if channel.recipient is not None and channel.recipient.id == user_id:
                return channel.recipient
        return None

    def bot_member(self, guild: FakeGuild) -> FakeMember:
        member = guild.member(self.bot_user.id)
        assert member is not None, "the bot is added to every guild on start"
        return member

    def bot_permissions_in(self, channel: FakeChannel) -> int:
        """What the bot may do in `channel`: its roles, then the channel's overwrites, as Discord
        computes it (`FakeGuild.permissions_in`); in a DM, everything a DM allows."""
        guild = self.guild(channel.guild_id)
        if guild is None:
            return int(DM_PERMISSIONS)
        return guild.permissions_in(self.bot_member(guild), channel)

    def dm_channel_for(self, user: FakeUser) -> FakeChannel:
        for channel in self.dm_channels.values():
            if channel.recipient is not None and channel.recipient.id == user.id:
                return channel
        channel = FakeChannel(name=f"dm-{user.username}", type=ChannelType.DM, recipient=user)
        self.dm_channels[channel.id] = channel
        return channel

    def interaction_by_token(self, token: str) -> FakeInteraction | None:
        for interaction in self.interactions.values():
            if interaction.token == token:
                return interaction
        return None

    def command_id(self, guild_id: int | None, command_type: int, name: str) -> int:
        """Discord keeps a command's id across re-syncs of the same name and type."""
        key = (guild_id, command_type, name)
        if key not in self.command_ids:
            self.command_ids[key] = snowflake()
        return self.command_ids[key]

    def fault_for(self, method: str, path: str) -> FaultRule | None:
        for rule in self.faults:
            if rule.matches(method, path):
                rule.hits += 1
                return rule
        return None

    def record_call(self, call: RecordedCall) -> None:
        self.calls.append(call)
        TALLY.requests += 1

    def record_outcome(self, call: RecordedCall) -> None:
        if call.invalid:
            log.warning("fake Discord refused a bad request: %s", call.describe())
            TALLY.invalid.append(call)

    @property
    def invalid_requests(self) -> list[RecordedCall]:
        return [c for c in self.calls if c.invalid and not c.expected_invalid]

    def recent_calls(self, count: int = 8) -> str:
        lines = []
        for call in self.calls[-count:]:
            detail = "" if 200 <= call.status < 300 else f" {str(call.response)[:160]}"
            lines.append(f"  {call.method} {call.path} -> {call.status}{detail}")
        return "\n".join(lines) or "  (no REST calls)"

    @staticmethod
    def now() -> float:
        return time.monotonic()
