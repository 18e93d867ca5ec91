"""`FakeDiscord`: the local Discord every end-to-end test talks to, and the API tests use.

    async with FakeDiscord(guilds=[FakeGuild(name="Art")]) as discord:
        # start the bot with discord.env() (subprocess) or configure_discord_endpoint(...)
        await discord.wait_until_connected()
        interaction = await discord.invoke_slash("imagine", {"prompt": "a cat"})
        response = await interaction.wait_for_response()
        assert response.deferred
        result = await discord.wait_for_message(lambda m: m.attachments)

It serves REST under `api_base` (http://127.0.0.1:PORT/api/v10), the gateway at
`gateway_url` (ws://127.0.0.1:PORT/gateway) and attachments under `http_base`. Everything
the bot does is recorded; waits are driven by state changes, never by polling sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import re
import secrets
import socket
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web

from .gateway import Close, Gateway, GatewaySession, Heartbeat, Intent
from .interactions import (
    FakeInteraction,
    InteractionType,
    InvalidInteraction,
    OptionBuilder,
    base_payload,
    check_allowed,
    find_command,
    focus,
)
from .messages import FakeMessage
from .models import (
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeRole,
    FakeUser,
    Perm,
)
from .rest import RestApi
from .state import FaultRule, RecordedCall, State

log = logging.getLogger(__name__)

T = TypeVar("T")

BOT_PERMISSIONS = int(
    Perm.VIEW_CHANNEL
    | Perm.SEND_MESSAGES
    | Perm.EMBED_LINKS
    | Perm.ATTACH_FILES
    | Perm.READ_MESSAGE_HISTORY
    | Perm.ADD_REACTIONS
    | Perm.USE_EXTERNAL_EMOJIS
    | Perm.SEND_MESSAGES_IN_THREADS
)
MAX_BODY_BYTES = 1024 * 1024 * 1024  # aiohttp's default is 1 MiB; boosted guilds take 100 MiB files

UserLike = FakeMember | FakeUser | str | int | None
GuildLike = FakeGuild | int | None
ChannelLike = FakeChannel | int | str | None


def describe_invalid(calls: Sequence[RecordedCall]) -> str:
    lines = [f"the fake Discord refused {len(calls)} request(s) the real Discord would refuse too:"]
    lines += [f"  {call.describe()}" for call in calls]
    return "\n".join(lines)


def make_token(bot_id: int) -> str:
    """Shaped like a real bot token: base64 of the id, a timestamp part and an HMAC part."""
    head = base64.b64encode(str(bot_id).encode()).decode().rstrip("=")
    return f"{head}.{secrets.token_urlsafe(5)[:6]}.{secrets.token_urlsafe(28)[:38]}"


class FakeDiscord:
    def __init__(
        self,
        *,
        guilds: Sequence[FakeGuild] | None = None,
        bot_user: FakeUser | None = None,
        token: str | None = None,
        bot_permissions: int = BOT_PERMISSIONS,
        heartbeat_interval_ms: int = 41_250,
        enforce_heartbeats: bool = True,
        interaction_deadline_s: float = 3.0,
        interaction_token_ttl_s: float = 900.0,
        privileged_intents: int = Intent.PRIVILEGED,
        host: str = "127.0.0.1",
    ) -> None:
        self.bot_user = bot_user or FakeUser(username="imagine-bot", bot=True)
        self.guilds = list(guilds) if guilds is not None else [FakeGuild()]
        self.token = token or make_token(self.bot_user.id)
        self.interaction_deadline_s = interaction_deadline_s
        self.interaction_token_ttl_s = interaction_token_ttl_s
        self.host = host
        self.state = State(
            bot_user=self.bot_user, application_id=self.bot_user.id, token=self.token, guilds=self.guilds
        )
        self.gateway = Gateway(
            self.state,
            heartbeat_interval_ms=heartbeat_interval_ms,
            heartbeat_timeout_s=heartbeat_interval_ms / 1000 * 2.5 if enforce_heartbeats else None,
            privileged_intents=privileged_intents,
        )
        self.rest = RestApi(self.state, self.gateway, gateway_url=lambda: self.gateway_url)
        for guild in self.guilds:
            bot_role = FakeRole(name=self.bot_user.username, permissions=bot_permissions, managed=True)
            guild.roles.append(bot_role)
            guild.add_member(self.bot_user, roles=[bot_role])
        self._runner: web.AppRunner | None = None
        self._background: set[asyncio.Task] = set()
        self.port = 0

    # lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> FakeDiscord:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/gateway", self.gateway.handle)
        self.rest.add_to(app)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self.state.http_base = self.http_base
        self.gateway.url = self.gateway_url
        log.info("fake Discord on %s", self.http_base)
        return self

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
        if exc_type is None and self.state.internal_errors:
            raise AssertionError(f"the fake Discord itself failed: {self.state.internal_errors}")
        if exc_type is None and self.invalid_requests:
            raise AssertionError(describe_invalid(self.take_invalid_requests()))

    # addresses ---------------------------------------------------------------------------------

    @property
    def http_base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.http_base}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.host}:{self.port}/gateway"

    @property
    def application_id(self) -> int:
        return self.state.application_id

    def env(self) -> dict[str, str]:
        """Environment for `python -m bot` as a subprocess: token and REST base (gateway via lookup)."""
        return {"DISCORD_TOKEN": self.token, "DISCORD_API_BASE": self.api_base}

    @property
    def guild(self) -> FakeGuild:
        """The first guild (most tests have one)."""
        return self.guilds[0]

    # waiting -----------------------------------------------------------------------------------

    async def wait_until(
        self,
        predicate: Callable[[], T],
        *,
        timeout: float = 10.0,
        what: str = "condition",
    ) -> T:
        """Re-check `predicate` after every change the fake sees; return its first truthy value."""

        def describe() -> str:
            return (
                f"timed out after {timeout} s waiting for {what}; recent calls:\n{self.state.recent_calls()}"
            )

        return await self.state.notifier.wait_until(predicate, timeout=timeout, describe=describe)

    # gateway -----------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.gateway.connected

    async def wait_until_connected(self, *, timeout: float = 15.0) -> GatewaySession:
        """Until a session is identified (READY and GUILD_CREATEs sent) or resumed, and connected."""

        def live() -> GatewaySession | None:
            session = self.gateway.live_session()
            return session if session is not None and session.connection is not None else None

        return await self.wait_until(live, timeout=timeout, what="the bot to connect to the gateway")

    @property
    def identifies(self) -> int:
        return self.gateway.identifies

    @property
    def resumes(self) -> int:
        return self.gateway.resumes

    @property
    def heartbeats(self) -> list[Heartbeat]:
        return self.gateway.heartbeats

    def max_heartbeat_gap(self, *, since: float | None = None) -> float:
        """The longest pause between consecutive heartbeats (seconds), optionally after `since`."""
        times = [h.at for h in self.gateway.heartbeats if since is None or h.at >= since]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    async def drop_gateway(self, *, code: int = Close.UNKNOWN_ERROR, resumable: bool = True) -> None:
        """Close the bot's websocket; it reconnects and RESUMEs (re-IDENTIFYs if not resumable)."""
        await self.gateway.drop(code=code, resumable=resumable)

    async def invalidate_session(self, *, resumable: bool = False) -> None:
        await self.gateway.invalidate(resumable=resumable)

    async def request_reconnect(self) -> None:
        await self.gateway.request_reconnect()

    # the bot's permissions per channel --------------------------------------------------------

    def set_bot_permissions(self, channel: ChannelLike, permissions: int, *, guild: GuildLike = None) -> None:
        """Leave the bot exactly `permissions` in `channel` (an object, id or name), as a member
        overwrite there would.

        Later interactions there carry them as `app_permissions`; REST calls are answered by
        them (50001 without View Channel, 50013 on sends and uploads, embeds dropped without
        Embed Links, an empty history without Read Message History); and the bot is sent a
        CHANNEL_UPDATE, so discord.py's own `permissions_for` agrees once it has arrived.
        """
        target = self._find_channel(channel, guild)
        owner = self._guild(target.guild_id)
        owner.set_member_permissions(self.state.bot_member(owner), target, permissions)
        update = self.gateway.dispatch_guild_event(
            "CHANNEL_UPDATE", target.to_payload(), guild_id=owner.id, intent=Intent.GUILDS
        )
        task = asyncio.get_running_loop().create_task(update)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        self.state.notify()

    def bot_permissions(self, channel: ChannelLike, *, guild: GuildLike = None) -> int:
        """What the bot may do in `channel` (what interactions there carry as `app_permissions`)."""
        return self.state.bot_permissions_in(self._find_channel(channel, guild))

    # application commands ----------------------------------------------------------------------

    def registered_commands(self, guild: GuildLike = None) -> list[dict]:
        """Global commands, or those synced to `guild`."""
        if guild is None:
            return list(self.state.global_commands)
        return list(self.state.guild_commands.get(self._guild(guild).id, []))

    def command(self, name: str, *, guild: GuildLike = None) -> dict:
        for command in self.registered_commands(guild):
            if command["name"] == name:
                return command
        raise KeyError(f"/{name} is not registered ({[c['name'] for c in self.registered_commands(guild)]})")

    async def wait_for_commands(
        self,
        *names: str,
        guild: GuildLike = None,
        timeout: float = 15.0,
    ) -> list[dict]:
        """Until the bot has synced (at least) these command names."""

        def synced() -> list[dict] | None:
            commands = self.registered_commands(guild)
            have = {c["name"] for c in commands}
            return commands if commands and set(names) <= have else None

        return await self.wait_until(
            synced, timeout=timeout, what=f"command sync of {names or 'any command'}"
        )

    # interactions ------------------------------------------------------------------------------

    async def invoke_slash(
        self,
        command: str,
        options: Mapping[str, Any] | None = None,
        *,
        user: UserLike = None,
        guild: GuildLike = None,
        channel: ChannelLike = None,
        dm: bool = False,
        validate: bool = True,
        raw_options: list[dict] | None = None,
        locale: str = "en-US",
    ) -> FakeInteraction:
        """A member runs `/command` ("queue cancel" for subcommands) with `options`.

        Options are typed and checked against what the bot registered, as Discord's client
        does; `validate=False` skips that (and permission gating), `raw_options` sends the
        given option list verbatim.
        """
        parts = command.lstrip("/").split()
        target_guild = None if dm else self._guild(guild)
        member = self._member(target_guild, user) if target_guild else None
        person = member.user if member else self._user(user)
        if target_guild is not None:
            target_channel = self._channel(target_guild, channel)
        else:
            target_channel = self.state.dm_channel_for(person)
        definition = find_command(self.state, parts[0], target_guild.id if target_guild else None)
        if validate:
            check_allowed(definition, target_guild, member)
        if raw_options is not None:
            data: dict[str, Any] = {
                "id": definition["id"],
                "name": definition["name"],
                "type": definition.get("type", 1),
                "options": raw_options,
            }
        else:
            builder = OptionBuilder(self.state, target_guild, validate=validate)
            data = builder.command_data(definition, parts[1:], options or {})
        return await self._dispatch_interaction(
            InteractionType.APPLICATION_COMMAND, data, target_guild, target_channel, member, person, locale
        )

    async def invoke_message_command(
        self, name: str, message: FakeMessage, *, user: UserLike = None
    ) -> FakeInteraction:
        """A member runs the message context-menu command `name` on `message` (Apps > name)."""
        channel = self.state.channel(message.channel_id)
        assert channel is not None
        target_guild = self.state.guild(channel.guild_id)
        member = self._member(target_guild, user) if target_guild else None
        person = member.user if member else self._user(user)
        definition = find_command(self.state, name, target_guild.id if target_guild else None, 3)
        check_allowed(definition, target_guild, member)
        payload = message.to_payload(http_base=self.http_base, application_id=self.application_id)
        data = {
            "id": definition["id"],
            "name": definition["name"],
            "type": 3,
            "target_id": str(message.id),
            "resolved": {"messages": {str(message.id): payload}},
        }
        return await self._dispatch_interaction(
            InteractionType.APPLICATION_COMMAND, data, target_guild, channel, member, person, "en-US"
        )

    async def autocomplete(
        self,
        command: str,
        options: Mapping[str, Any],
        *,
        focused: str,
        user: UserLike = None,
        guild: GuildLike = None,
        channel: ChannelLike = None,
    ) -> FakeInteraction:
        """A member typing into option `focused`; `wait_for_response().choices` are the suggestions."""
        parts = command.lstrip("/").split()
        target_guild = self._guild(guild)
        member = self._member(target_guild, user)
        definition = find_command(self.state, parts[0], target_guild.id)
        data = OptionBuilder(self.state, target_guild, validate=False).command_data(
            definition, parts[1:], options
        )
        if not focus(data["options"], focused):
            raise InvalidInteraction(f"option {focused!r} is not among {list(options)}")
        return await self._dispatch_interaction(
            InteractionType.AUTOCOMPLETE,
            data,
            target_guild,
            self._channel(target_guild, channel),
            member,
            member.user,
            "en-US",
        )

    async def click(
        self,
        message: FakeMessage | int,
        custom_id: str,
        *,
        user: UserLike = None,
        values: list[str] | None = None,
        validate: bool = True,
    ) -> FakeInteraction:
        """A member presses the button (or picks `values` in the select) `custom_id` on `message`."""
        target = message if isinstance(message, FakeMessage) else self.message(message)
        component: dict = {"type": 2, "custom_id": custom_id}
        if validate:
            if target.deleted:
                raise InvalidInteraction(f"message {target.id} was deleted; nobody can click it")
            component = target.component(custom_id)
            if component.get("disabled"):
                raise InvalidInteraction(f"component {custom_id!r} on message {target.id} is disabled")
        data: dict[str, Any] = {
            "custom_id": component.get("custom_id", custom_id),
            "component_type": component["type"],
        }
        if values is not None or component["type"] != 2:
            data["values"] = list(values or [])
        channel = self.state.channel(target.channel_id)
        assert channel is not None
        target_guild = self.state.guild(channel.guild_id)
        member = self._member(target_guild, user) if target_guild else None
        person = member.user if member else self._user(user)
        return await self._dispatch_interaction(
            InteractionType.MESSAGE_COMPONENT,
            data,
            target_guild,
            channel,
            member,
            person,
            "en-US",
            message=target,
        )

    async def submit_modal(
        self, interaction: FakeInteraction, values: Mapping[str, str], *, user: UserLike = None
    ) -> FakeInteraction:
        """Fill in and submit the modal the bot answered `interaction` with."""
        response = interaction.response
        if response is None or response.kind != "modal":
            raise InvalidInteraction(f"{interaction!r} was not answered with a modal")
        components = []
        for row in response.data.get("components") or []:
            if row.get("type") == 18:  # a label wrapping one input
                inner = row.get("component") or {}
                filled = {
                    "type": inner.get("type"),
                    "custom_id": inner.get("custom_id"),
                    "value": values.get(inner.get("custom_id"), ""),
                }
                components.append({"type": 18, "component": filled})
            else:
                inputs = [
                    {
                        "type": c.get("type"),
                        "custom_id": c.get("custom_id"),
                        "value": values.get(c.get("custom_id"), ""),
                    }
                    for c in row.get("components") or []
                ]
                components.append({"type": 1, "components": inputs})
        data = {"custom_id": response.data.get("custom_id"), "components": components}
        channel = self.state.channel(interaction.channel_id)
        assert channel is not None
        target_guild = self.state.guild(interaction.guild_id)
        member = self._member(target_guild, user or interaction.user) if target_guild else None
        person = member.user if member else interaction.user
        message = self.state.messages.get(interaction.message_id) if interaction.message_id else None
        return await self._dispatch_interaction(
            InteractionType.MODAL_SUBMIT,
            data,
            target_guild,
            channel,
            member,
            person,
            "en-US",
            message=message,
        )

    @property
    def interactions(self) -> list[FakeInteraction]:
        return list(self.state.interactions.values())

    async def _dispatch_interaction(
        self,
        kind: int,
        data: dict,
        guild: FakeGuild | None,
        channel: FakeChannel,
        member: FakeMember | None,
        user: FakeUser,
        locale: str,
        *,
        message: FakeMessage | None = None,
    ) -> FakeInteraction:
        payload = base_payload(
            self.state,
            type=kind,
            data=data,
            guild=guild,
            channel=channel,
            member=member,
            user=user,
            locale=locale,
        )
        if message is not None:
            payload["message"] = message.to_payload(
                http_base=self.http_base, application_id=self.application_id
            )
        interaction = FakeInteraction(
            state=self.state,
            type=kind,
            payload=payload,
            user=user,
            guild_id=guild.id if guild else None,
            channel_id=channel.id,
            deadline_s=self.interaction_deadline_s,
            token_ttl_s=self.interaction_token_ttl_s,
            message_id=message.id if message else None,
        )
        if self.gateway.live_session(interaction.guild_id) is None:
            await self.wait_until_connected()
        self.state.interactions[interaction.id] = interaction
        await self.gateway.dispatch("INTERACTION_CREATE", payload, guild_id=interaction.guild_id)
        self.state.notify()
        return interaction

    # messages ----------------------------------------------------------------------------------

    def messages(
        self,
        channel: FakeChannel | int | None = None,
        *,
        include_deleted: bool = False,
        include_ephemeral: bool = False,
    ) -> list[FakeMessage]:
        """Messages in a channel (all channels when None), oldest first, as members see them."""
        channel_id = channel.id if isinstance(channel, FakeChannel) else channel
        return [
            m
            for m in self.state.messages.values()
            if (channel_id is None or m.channel_id == channel_id)
            and (include_deleted or not m.deleted)
            and (include_ephemeral or not m.ephemeral)
        ]

    def message(self, message_id: int) -> FakeMessage:
        return self.state.messages[message_id]

    async def wait_for_message(
        self,
        predicate: Callable[[FakeMessage], bool] | None = None,
        *,
        channel: FakeChannel | int | None = None,
        include_ephemeral: bool = False,
        timeout: float = 10.0,
    ) -> FakeMessage:
        """The first message (oldest first) whose *current* state satisfies `predicate`."""

        def found() -> FakeMessage | None:
            for message in self.messages(channel, include_ephemeral=include_ephemeral):
                if predicate is None or predicate(message):
                    return message
            return None

        return await self.wait_until(found, timeout=timeout, what="a matching message")

    # REST faults and records -------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path: str,
        status: int,
        *,
        code: int = 0,
        message: str | None = None,
        json: Any = None,
        times: int | None = 1,
        retry_after: float = 0.05,
        headers: Mapping[str, str] | None = None,
        after_serving: bool = False,
        delay_s: float = 0.0,
    ) -> FaultRule:
        """Answer the next `times` calls matching `method` ("*" for any) and regex `path` with an error.

        Paths are matched without the /api/v10 prefix, e.g. r"/channels/\\d+/messages$".
        429s carry `retry_after`, `Retry-After` and `Via` like Discord's, so discord.py retries.
        With `after_serving`, the call is served first and only its answer is replaced (Discord
        did the work, the bot never heard): after `delay_s`, as when a connection dies mid-answer.
        """
        rule = FaultRule(
            method=method.upper(),
            path=re.compile(path),
            status=status,
            code=code,
            message=message,
            json=json,
            headers=dict(headers or {}),
            retry_after=retry_after,
            times=times,
            after_serving=after_serving,
            delay_s=delay_s,
        )
        self.state.faults.append(rule)
        return rule

    def hold_answer(self, method: str, path: str) -> asyncio.Event:
        """Serve the next call matching `method` and regex `path`, but hold back its (normal) answer
        until the returned event is set: the bot waits on Discord while everything else moves on."""
        release = asyncio.Event()
        rule = FaultRule(
            method=method.upper(), path=re.compile(path), status=200, after_serving=True, hold=release
        )
        self.state.faults.append(rule)
        return release

    def clear_faults(self) -> None:
        self.state.faults.clear()

    @property
    def calls(self) -> list[RecordedCall]:
        return self.state.calls

    def calls_to(self, method: str, path: str) -> list[RecordedCall]:
        pattern = re.compile(path)
        return [c for c in self.state.calls if method.upper() in ("*", c.method) and pattern.search(c.path)]

    @property
    def internal_errors(self) -> list[str]:
        return self.state.internal_errors

    @property
    def invalid_requests(self) -> list[RecordedCall]:
        """Requests Discord would refuse (400), not yet taken back by `take_invalid_requests`.

        The fake answers each with Discord's own error; the suite fails on any left over
        (here on leaving `async with`, and per test through tests/conftest.py).
        """
        return self.state.invalid_requests

    def take_invalid_requests(self) -> list[RecordedCall]:
        """For tests that send bad requests on purpose: returns them and marks them expected."""
        taken = self.state.invalid_requests
        for call in taken:
            call.expected_invalid = True
        return taken

    # lookups -----------------------------------------------------------------------------------

    def _guild(self, guild: GuildLike) -> FakeGuild:
        if guild is None:
            return self.guilds[0]
        if isinstance(guild, FakeGuild):
            return guild
        found = self.state.guild(guild)
        if found is None:
            raise KeyError(f"no guild {guild}")
        return found

    def _find_channel(self, channel: ChannelLike, guild: GuildLike = None) -> FakeChannel:
        if isinstance(channel, int) and guild is None:
            found = self.state.channel(channel)
            if found is None or found.guild_id is None:
                raise KeyError(f"no guild channel {channel}")
            return found
        return self._channel(self._guild(guild), channel)

    @staticmethod
    def _channel(guild: FakeGuild, channel: ChannelLike) -> FakeChannel:
        if isinstance(channel, FakeChannel):
            return channel
        return guild.channel(channel)

    def _member(self, guild: FakeGuild, user: UserLike) -> FakeMember:
        """Look up or add the member; `None` means a plain member called "member"."""
        if isinstance(user, FakeMember):
            if guild.member(user.id) is None:
                guild.members.append(user)
            return user
        if isinstance(user, FakeUser):
            return guild.add_member(user)
        if isinstance(user, int):
            member = guild.member(user)
            if member is None:
                raise KeyError(f"no member {user} in {guild.name}")
            return member
        return guild.member(user or "member") or guild.add_member(user or "member")

    def _user(self, user: UserLike) -> FakeUser:
        if isinstance(user, FakeMember):
            return user.user
        if isinstance(user, FakeUser):
            return user
        if isinstance(user, int):
            found = self.state.user(user)
            if found is None:
                raise KeyError(f"no user {user}")
            return found
        name = user or "member"
        for guild in self.guilds:
            member = guild.member(name)
            if member is not None:
                return member.user
        return FakeUser(username=name)
