"""Interactions: building INTERACTION_CREATE payloads the way the Discord client would, and
recording how the bot answered them.

Slash-command options are typed and checked against the schema the bot registered (choices,
ranges, lengths, required options, `default_member_permissions`), because Discord refuses
bad input in the client before the bot ever sees it. Tests that want to send what Discord
never would (fuzzing, stale schemas) pass `validate=False` or `raw_options=`.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .messages import FLAG_EPHEMERAL, FakeAttachment, FakeMessage
from .models import (
    ALL_PERMISSIONS,
    MIB,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeRole,
    FakeUser,
    snowflake,
)

if TYPE_CHECKING:
    from .state import State

log = logging.getLogger(__name__)


class InteractionType:
    APPLICATION_COMMAND = 2
    MESSAGE_COMPONENT = 3
    AUTOCOMPLETE = 4
    MODAL_SUBMIT = 5


class ResponseType:
    CHANNEL_MESSAGE = 4
    DEFERRED_CHANNEL_MESSAGE = 5
    DEFERRED_UPDATE_MESSAGE = 6
    UPDATE_MESSAGE = 7
    AUTOCOMPLETE_RESULT = 8
    MODAL = 9

    NAMES: ClassVar[dict[int, str]] = {
        4: "message",
        5: "deferred",
        6: "deferred_update",
        7: "update",
        8: "autocomplete",
        9: "modal",
    }


class OptionType:
    SUB_COMMAND = 1
    SUB_COMMAND_GROUP = 2
    STRING = 3
    INTEGER = 4
    BOOLEAN = 5
    USER = 6
    CHANNEL = 7
    ROLE = 8
    MENTIONABLE = 9
    NUMBER = 10
    ATTACHMENT = 11


class InvalidInteraction(ValueError):
    """The Discord client would not let a member send this (unknown command, bad option …)."""


@dataclass(frozen=True)
class InteractionResponse:
    """The bot's initial answer to an interaction (its `/callback` call)."""

    type: int
    data: dict
    latency_s: float  # from dispatch to the callback reaching the fake

    @property
    def kind(self) -> str:
        return ResponseType.NAMES.get(self.type, str(self.type))

    @property
    def deferred(self) -> bool:
        return self.type in (ResponseType.DEFERRED_CHANNEL_MESSAGE, ResponseType.DEFERRED_UPDATE_MESSAGE)

    @property
    def ephemeral(self) -> bool:
        return bool((self.data.get("flags") or 0) & FLAG_EPHEMERAL)

    @property
    def content(self) -> str:
        return self.data.get("content") or ""

    @property
    def embeds(self) -> list[dict]:
        return self.data.get("embeds") or []

    @property
    def components(self) -> list[dict]:
        return self.data.get("components") or []

    @property
    def choices(self) -> list[dict]:
        """Autocomplete suggestions."""
        return self.data.get("choices") or []


class FakeInteraction:
    """One interaction the fake dispatched, with everything the bot did in answer to it."""

    def __init__(
        self,
        *,
        state: State,
        type: int,
        payload: dict,
        user: FakeUser,
        guild_id: int | None,
        channel_id: int,
        deadline_s: float,
        token_ttl_s: float,
        message_id: int | None = None,
    ) -> None:
        self._state = state
        self.id = int(payload["id"])
        self.token: str = payload["token"]
        self.type = type
        self.payload = payload
        self.user = user
        self.guild_id = guild_id
        self.channel_id = channel_id
        self.message_id = message_id  # the message a component lives on
        self.deadline_s = deadline_s
        self.token_ttl_s = token_ttl_s
        self.created_at = state.now()
        self.response: InteractionResponse | None = None
        self.original_message_id: int | None = message_id
        self.followup_ids: list[int] = []
        self._token_expired = False
        self.late_callbacks = 0  # callbacks refused with 10062 because they came after deadline_s

    # what tests read -------------------------------------------------------------------

    @property
    def data(self) -> dict:
        return self.payload.get("data") or {}

    @property
    def original(self) -> FakeMessage | None:
        """The response message (a slash reply or the message a clicked button lives on)."""
        if self.original_message_id is None:
            return None
        return self._state.messages.get(self.original_message_id)

    @property
    def followups(self) -> list[FakeMessage]:
        return [self._state.messages[i] for i in self.followup_ids]

    @property
    def messages(self) -> list[FakeMessage]:
        """Messages this interaction created (its response and follow-ups), oldest first."""
        original = self.original
        created = [] if original is None or original.id == self.message_id else [original]
        # the first follow-up after a deferred reply *is* that reply: list it once
        return created + [m for m in self.followups if m not in created]

    @property
    def token_expired(self) -> bool:
        return self._token_expired or self._state.now() - self.created_at > self.token_ttl_s

    @property
    def answered_late(self) -> bool:
        return self._state.now() - self.created_at > self.deadline_s

    def expire_token(self) -> None:
        """Jump past the 15 minutes: webhook calls with this token now get 401/50027."""
        self._token_expired = True

    async def wait_for_response(self, *, timeout: float = 5.0) -> InteractionResponse:
        def describe() -> str:
            return (
                f"interaction {self.id} ({self.describe()}) got no callback in {timeout} s; "
                f"recent calls:\n{self._state.recent_calls()}"
            )

        return await self._state.notifier.wait_until(
            lambda: self.response, timeout=timeout, describe=describe
        )

    async def wait_for_original(
        self,
        predicate: Callable[[FakeMessage], bool] | None = None,
        *,
        timeout: float = 10.0,
    ) -> FakeMessage:
        """The response message once `predicate` holds (default: no longer "thinking")."""
        check = predicate or (lambda message: not message.loading)

        def found() -> FakeMessage | None:
            message = self.original
            return message if message is not None and check(message) else None

        def describe() -> str:
            return (
                f"original response of interaction {self.id} ({self.describe()}) did not reach the "
                f"expected state in {timeout} s; it is {self.original!r}; recent calls:\n"
                f"{self._state.recent_calls()}"
            )

        return await self._state.notifier.wait_until(found, timeout=timeout, describe=describe)

    async def wait_for_followup(
        self,
        predicate: Callable[[FakeMessage], bool] | None = None,
        *,
        timeout: float = 10.0,
    ) -> FakeMessage:
        def found() -> FakeMessage | None:
            return next((m for m in self.followups if predicate is None or predicate(m)), None)

        def describe() -> str:
            return (
                f"no matching follow-up for interaction {self.id} ({self.describe()}) in {timeout} s; "
                f"follow-ups: {self.followups}; recent calls:\n{self._state.recent_calls()}"
            )

        return await self._state.notifier.wait_until(found, timeout=timeout, describe=describe)

    def describe(self) -> str:
        data = self.data
        return data.get("custom_id") or "/" + " ".join(
            [data.get("name", "?"), *(o["name"] for o in _subcommand_chain(data.get("options") or []))]
        )

    def __repr__(self) -> str:
        response = self.response.kind if self.response else "unanswered"
        return f"<FakeInteraction id={self.id} {self.describe()} {response}>"

    def owns(self, message: FakeMessage) -> bool:
        return message.id == self.original_message_id or message.id in self.followup_ids


def _subcommand_chain(options: list[dict]) -> list[dict]:
    for option in options:
        if option.get("type") in (OptionType.SUB_COMMAND, OptionType.SUB_COMMAND_GROUP):
            return [option, *_subcommand_chain(option.get("options") or [])]
    return []


def new_token() -> str:
    return "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48)


# payload building ------------------------------------------------------------------------


def base_payload(
    state: State,
    *,
    type: int,
    data: dict,
    guild: FakeGuild | None,
    channel: FakeChannel,
    member: FakeMember | None,
    user: FakeUser,
    locale: str,
) -> dict:
    """Fields every interaction carries; `attachment_size_limit` is required by discord.py 2.7."""
    payload: dict[str, Any] = {
        "id": str(snowflake()),
        "application_id": str(state.application_id),
        "type": type,
        "data": data,
        "channel_id": str(channel.id),
        "token": new_token(),
        "version": 1,
        "locale": locale,
        "entitlements": [],
        "attachment_size_limit": guild.filesize_limit if guild else 10 * MIB,
    }
    if guild is not None and member is not None:
        permissions = guild.permissions_in(member, channel)
        payload.update(
            guild_id=str(guild.id),
            guild={"id": str(guild.id), "locale": guild.preferred_locale, "features": []},
            guild_locale=guild.preferred_locale,
            member=member.to_payload(permissions=permissions),
            app_permissions=str(state.bot_permissions_in(channel)),
            authorizing_integration_owners={"0": str(guild.id)},
            context=0,
            channel={**channel.to_payload(), "permissions": str(permissions)},
        )
    else:
        payload.update(
            user=user.to_payload(),
            app_permissions=str(state.bot_permissions_in(channel)),
            authorizing_integration_owners={"0": str(user.id)},
            context=1,
            channel=channel.to_payload(),
        )
    return payload


def find_command(state: State, name: str, guild_id: int | None, command_type: int = 1) -> dict:
    """Guild commands shadow nothing on Discord; both show up. Guild ones are checked first."""
    candidates = list(state.guild_commands.get(guild_id, [])) if guild_id else []
    candidates += state.global_commands
    for command in candidates:
        if command["name"] == name and command.get("type", 1) == command_type:
            return command
    registered = sorted({c["name"] for c in candidates})
    raise InvalidInteraction(f"no /{name} registered for this guild (registered: {registered})")


def check_allowed(command: dict, guild: FakeGuild | None, member: FakeMember | None) -> None:
    """Discord hides commands a member lacks `default_member_permissions` for."""
    if guild is None:
        contexts = command.get("contexts")
        if command.get("dm_permission") is False or (contexts is not None and 1 not in contexts):
            raise InvalidInteraction(f"/{command['name']} cannot be used in DMs")
        return
    contexts = command.get("contexts")
    if contexts is not None and 0 not in contexts:
        raise InvalidInteraction(f"/{command['name']} cannot be used in guilds")
    required = command.get("default_member_permissions")
    if required is None or member is None:
        return
    have = guild.permissions_of(member)
    if have != ALL_PERMISSIONS and (have & int(required)) != int(required):
        raise InvalidInteraction(
            f"{member.user.username} lacks permissions {required} for /{command['name']} "
            "(pass validate=False to invoke it anyway, as a server override would allow)"
        )


class OptionBuilder:
    """Turns `{"prompt": "a cat", "steps": 20}` into typed options plus `resolved` data."""

    def __init__(self, state: State, guild: FakeGuild | None, *, validate: bool) -> None:
        self.state = state
        self.guild = guild
        self.validate = validate
        self.resolved: dict[str, dict[str, Any]] = {}

    def command_data(self, command: dict, path: list[str], values: Mapping[str, Any]) -> dict:
        definitions = command.get("options") or []
        options = self._walk(definitions, path, values, f"/{command['name']}")
        data: dict[str, Any] = {
            "id": str(command["id"]),
            "name": command["name"],
            "type": command.get("type", 1),
            "options": options,
        }
        if command.get("guild_id"):
            data["guild_id"] = str(command["guild_id"])
        if self.resolved:
            data["resolved"] = self.resolved
        return data

    def _walk(
        self, definitions: list[dict], path: list[str], values: Mapping[str, Any], where: str
    ) -> list[dict]:
        if path:
            head, rest = path[0], path[1:]
            for definition in definitions:
                kind = definition.get("type")
                if definition["name"] == head and kind in (
                    OptionType.SUB_COMMAND,
                    OptionType.SUB_COMMAND_GROUP,
                ):
                    children = self._walk(definition.get("options") or [], rest, values, f"{where} {head}")
                    return [{"type": kind, "name": head, "options": children}]
            if self.validate:
                names = [d["name"] for d in definitions]
                raise InvalidInteraction(f"{where} has no subcommand {head!r} (has {names})")
            return [
                {"type": OptionType.SUB_COMMAND, "name": head, "options": self._walk([], rest, values, where)}
            ]
        if self.validate and any(
            d.get("type") in (OptionType.SUB_COMMAND, OptionType.SUB_COMMAND_GROUP) for d in definitions
        ):
            names = [d["name"] for d in definitions]
            raise InvalidInteraction(f"{where} needs a subcommand (one of {names})")
        return self._leaf_options(definitions, values, where)

    def _leaf_options(self, definitions: list[dict], values: Mapping[str, Any], where: str) -> list[dict]:
        by_name = {d["name"]: d for d in definitions}
        options = []
        for name, value in values.items():
            definition = by_name.get(name)
            if definition is None:
                if self.validate:
                    raise InvalidInteraction(f"{where} has no option {name!r} (has {sorted(by_name)})")
                definition = {"name": name, "type": _guess_type(value)}
            options.append(self._option(definition, value, where))
        if self.validate:
            missing = [d["name"] for d in definitions if d.get("required") and d["name"] not in values]
            if missing:
                raise InvalidInteraction(f"{where} is missing required options {missing}")
        return options

    def _option(self, definition: dict, value: Any, where: str) -> dict:
        kind = definition["type"]
        name = definition["name"]
        if kind in (OptionType.USER, OptionType.MENTIONABLE) and isinstance(value, FakeUser | FakeMember):
            return {
                "type": OptionType.USER if kind == OptionType.USER else kind,
                "name": name,
                "value": str(self._resolve_user(value)),
            }
        if kind in (OptionType.ROLE, OptionType.MENTIONABLE) and isinstance(value, FakeRole):
            self.resolved.setdefault("roles", {})[str(value.id)] = value.to_payload()
            return {"type": kind, "name": name, "value": str(value.id)}
        if kind == OptionType.CHANNEL and isinstance(value, FakeChannel):
            self.resolved.setdefault("channels", {})[str(value.id)] = {
                **value.to_payload(),
                "permissions": str(ALL_PERMISSIONS),
            }
            return {"type": kind, "name": name, "value": str(value.id)}
        if kind == OptionType.ATTACHMENT and isinstance(value, FakeAttachment):
            channel_id = 0
            self.state.uploads[value.id] = value
            self.resolved.setdefault("attachments", {})[str(value.id)] = value.to_payload(
                http_base=self.state.http_base, channel_id=channel_id
            )
            return {"type": kind, "name": name, "value": str(value.id)}
        if self.validate:
            self._check_value(definition, value, f"{where} {name}")
        if isinstance(value, FakeUser | FakeMember | FakeRole | FakeChannel | FakeAttachment):
            value = str(value.id)
        return {"type": kind, "name": name, "value": value}

    def _resolve_user(self, value: FakeUser | FakeMember) -> int:
        user = value.user if isinstance(value, FakeMember) else value
        self.resolved.setdefault("users", {})[str(user.id)] = user.to_payload()
        member = (
            value if isinstance(value, FakeMember) else (self.guild.member(user.id) if self.guild else None)
        )
        if member is not None and self.guild is not None:
            member_payload = member.to_payload(permissions=self.guild.permissions_of(member))
            member_payload.pop("user")
            self.resolved.setdefault("members", {})[str(user.id)] = member_payload
        return user.id

    @staticmethod
    def _check_value(definition: dict, value: Any, where: str) -> None:
        kind = definition["type"]
        expected = {
            OptionType.STRING: (str,),
            OptionType.INTEGER: (int,),
            OptionType.NUMBER: (int, float),
            OptionType.BOOLEAN: (bool,),
        }.get(kind)
        if kind in (
            OptionType.USER,
            OptionType.ROLE,
            OptionType.CHANNEL,
            OptionType.MENTIONABLE,
            OptionType.ATTACHMENT,
        ):
            raise InvalidInteraction(f"{where}: pass a Fake object for option type {kind}, got {value!r}")
        if expected is None:
            return
        if not isinstance(value, expected) or (kind != OptionType.BOOLEAN and isinstance(value, bool)):
            raise InvalidInteraction(f"{where}: {value!r} is not a valid option of type {kind}")
        choices = definition.get("choices")
        if choices and value not in [c["value"] for c in choices]:
            raise InvalidInteraction(f"{where}: {value!r} is not one of {[c['value'] for c in choices]}")
        if kind in (OptionType.INTEGER, OptionType.NUMBER):
            low, high = definition.get("min_value"), definition.get("max_value")
            if (low is not None and value < low) or (high is not None and value > high):
                raise InvalidInteraction(f"{where}: {value!r} is outside [{low}, {high}]")
        if kind == OptionType.STRING:
            low, high = definition.get("min_length"), definition.get("max_length", 6000)
            if (low is not None and len(value) < low) or (high is not None and len(value) > high):
                raise InvalidInteraction(f"{where}: length {len(value)} is outside [{low}, {high}]")


def _guess_type(value: Any) -> int:
    if isinstance(value, bool):
        return OptionType.BOOLEAN
    if isinstance(value, int):
        return OptionType.INTEGER
    if isinstance(value, float):
        return OptionType.NUMBER
    return OptionType.STRING


def focus(options: list[dict], focused: str) -> bool:
    """Mark the option named `focused` (anywhere under subcommands) for autocomplete."""
    for option in options:
        if option.get("type") in (OptionType.SUB_COMMAND, OptionType.SUB_COMMAND_GROUP):
            if focus(option.get("options") or [], focused):
                return True
        elif option["name"] == focused:
            option["focused"] = True
            option["value"] = str(option.get("value", ""))
            return True
    return False
