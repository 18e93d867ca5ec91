"""REST: the slice of Discord API v10 a bot uses, answered the way discord.py 2.7 expects.

One catch-all handler parses the body (JSON, or multipart with `payload_json` and
`files[n]`), records the call, applies armed faults, checks the bot token and routes by
regular expression. Replies carry `Content-Type: application/json` exactly (discord.py
treats anything else as text) and `X-RateLimit-*` headers with room left, so discord.py
never waits pre-emptively; 429s happen only when a test injects them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .commands import stored_command, validate_command, validate_command_list
from .gateway import Gateway, Intent
from .interactions import FakeInteraction, InteractionResponse, InteractionType, ResponseType
from .messages import (
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    SETTABLE_FLAGS,
    FakeAttachment,
    FakeMessage,
    FormErrors,
    edited_version,
    is_empty_message,
    new_version,
    validate_message_body,
)
from .models import MIB, ChannelType, FakeChannel, FakeGuild, Perm, snowflake
from .spec_check import check_request
from .state import DEFAULT_ERROR_MESSAGES, FaultRule, RecordedCall, State

log = logging.getLogger(__name__)

API_PREFIX = "/api/v10"
MAX_FILES = 10
#: how long Discord remembers a message nonce sent with `enforce_nonce` ("a few minutes")
NONCE_WINDOW_S = 300.0


class ApiError(Exception):
    def __init__(
        self, status: int, code: int = 0, message: str | None = None, body: dict | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body or {
            "message": message or DEFAULT_ERROR_MESSAGES.get(code, f"{status}"),
            "code": code,
        }


def _form_error(path: str, message: str) -> dict:
    errors = FormErrors()
    errors.add(path, "BASE_TYPE_INVALID", message)
    return errors.to_body()


@dataclass
class Upload:
    index: int
    filename: str
    data: bytes


@dataclass
class Incoming:
    method: str
    path: str
    query: dict[str, str]
    headers: Any
    body: Any = None
    uploads: list[Upload] = field(default_factory=list)
    match: re.Match[str] | None = None

    def arg(self, name: str) -> str:
        assert self.match is not None
        return self.match.group(name)

    def int_arg(self, name: str) -> int:
        try:
            return int(self.arg(name))
        except ValueError:
            raise ApiError(404, 0, "404: Not Found") from None


Handler = Callable[[Incoming], Awaitable[Any]]


@dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    auth: bool
    bucket: str


NO_CONTENT = object()


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """`Content-Type` exactly `application/json`: discord.py compares the header verbatim."""
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    return web.Response(status=status, body=json.dumps(body).encode(), headers=all_headers)


def ratelimit_headers(bucket: str) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": "5",
        "X-RateLimit-Remaining": "4",
        "X-RateLimit-Reset": f"{time.time() + 1:.3f}",
        "X-RateLimit-Reset-After": "1.000",
        "X-RateLimit-Bucket": hashlib.sha1(bucket.encode()).hexdigest()[:16],
    }


_COMMANDS = "/applications/{app_id}/commands"
_GUILD_COMMANDS = "/applications/{app_id}/guilds/{guild_id}/commands"

#: Every route the fake serves: (method, path pattern, handler name, needs the bot token).
#: `trim_spec` keeps exactly the operations of Discord's OpenAPI description these serve.
ROUTES: tuple[tuple[str, str, str, bool], ...] = (
    ("GET", "/gateway", "get_gateway", False),
    ("GET", "/gateway/bot", "get_gateway_bot", True),
    ("GET", "/users/@me", "get_me", True),
    ("POST", "/users/@me/channels", "create_dm", True),
    ("GET", "/users/{user_id}", "get_user", True),
    ("GET", "/oauth2/applications/@me", "get_application", True),
    ("GET", "/applications/@me", "get_application", True),
    *(
        route
        for prefix in (_COMMANDS, _GUILD_COMMANDS)
        for route in (
            ("GET", prefix, "list_commands", True),
            ("PUT", prefix, "overwrite_commands", True),
            ("POST", prefix, "upsert_command", True),
            ("GET", prefix + "/{command_id}", "get_command", True),
            ("PATCH", prefix + "/{command_id}", "edit_command", True),
            ("DELETE", prefix + "/{command_id}", "delete_command", True),
        )
    ),
    ("POST", "/interactions/{interaction_id}/{token}/callback", "interaction_callback", False),
    ("POST", "/webhooks/{app_id}/{token}", "webhook_send", False),
    ("GET", "/webhooks/{app_id}/{token}/messages/{message_id}", "webhook_get", False),
    ("PATCH", "/webhooks/{app_id}/{token}/messages/{message_id}", "webhook_edit", False),
    ("DELETE", "/webhooks/{app_id}/{token}/messages/{message_id}", "webhook_delete", False),
    ("GET", "/channels/{channel_id}", "get_channel", True),
    ("POST", "/channels/{channel_id}/typing", "typing", True),
    ("GET", "/channels/{channel_id}/messages", "list_messages", True),
    ("POST", "/channels/{channel_id}/messages", "create_message", True),
    ("GET", "/channels/{channel_id}/messages/{message_id}", "get_message", True),
    ("PATCH", "/channels/{channel_id}/messages/{message_id}", "edit_message", True),
    ("DELETE", "/channels/{channel_id}/messages/{message_id}", "delete_message", True),
    ("GET", "/guilds/{guild_id}", "get_guild", True),
    ("GET", "/guilds/{guild_id}/channels", "get_guild_channels", True),
    ("GET", "/guilds/{guild_id}/roles", "get_guild_roles", True),
    ("GET", "/guilds/{guild_id}/members", "list_members", True),
    ("GET", "/guilds/{guild_id}/members/{user_id}", "get_member", True),
)


class RestApi:
    def __init__(self, state: State, gateway: Gateway, *, gateway_url: Callable[[], str]) -> None:
        self.state = state
        self.gateway = gateway
        self.gateway_url = gateway_url
        self.routes: list[Route] = []
        self._add_routes()

    # routing -------------------------------------------------------------------------------

    def route(self, method: str, pattern: str, handler: Handler, *, auth: bool = True) -> None:
        regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$"
        self.routes.append(Route(method, re.compile(regex), handler, auth, f"{method} {pattern}"))

    def _add_routes(self) -> None:
        for method, pattern, handler, auth in ROUTES:
            self.route(method, pattern, getattr(self, handler), auth=auth)

    def add_to(self, app: web.Application) -> None:
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self.handle)
        app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self.serve_attachment)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        incoming = Incoming(request.method, path, dict(request.query), request.headers)
        call = RecordedCall(request.method, path, dict(request.query), None, [], self.state.now())
        self.state.record_call(call)
        bucket = f"{request.method} {path}"
        try:
            await self._read_body(request, incoming)
            call.body = incoming.body
            call.files = [(u.filename, len(u.data)) for u in incoming.uploads]
            fault = self.state.fault_for(request.method, path)
            if fault is not None and not fault.after_serving:
                return await self._fault_answer(call, fault, bucket)
            route = self._find_route(incoming)
            bucket = route.bucket
            if route.auth and request.headers.get("Authorization") != f"Bot {self.state.token}":
                raise ApiError(401, 0, "401: Unauthorized")
            self._check_against_spec(incoming)
            result = await route.handler(incoming)
            if fault is not None and fault.hold is not None:
                self.state.notify()  # what it did is visible while its answer is held back
                await fault.hold.wait()
            elif fault is not None:
                self.state.notify()  # what it did is visible while its answer is held back
                return await self._fault_answer(call, fault, bucket)
            if result is NO_CONTENT:
                call.status = 204
                return web.Response(status=204, headers=ratelimit_headers(bucket))
            call.status, call.response = 200, result
            return json_response(result, headers=ratelimit_headers(bucket))
        except ApiError as exc:
            call.status, call.response = exc.status, exc.body
            return json_response(exc.body, status=exc.status, headers=ratelimit_headers(bucket))
        except Exception as exc:
            log.exception("fake Discord failed on %s %s", request.method, path)
            self.state.internal_errors.append(f"{request.method} {path}: {exc!r}")
            call.status, call.response = 500, {"message": "500: fake Discord bug", "code": 0}
            return json_response(call.response, status=500)
        finally:
            self.state.record_outcome(call)
            self.state.notify()

    async def _fault_answer(self, call: RecordedCall, fault: FaultRule, bucket: str) -> web.Response:
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        call.fault = fault
        call.status, call.response = fault.status, fault.body()
        headers = {**ratelimit_headers(bucket), **fault.response_headers()}
        return json_response(call.response, status=fault.status, headers=headers)

    @staticmethod
    def _check_against_spec(incoming: Incoming) -> None:
        body = incoming.body if incoming.body is not None else ({} if incoming.uploads else None)
        errors = check_request(
            incoming.method, incoming.path, incoming.query, body, has_body=body is not None
        )
        if errors:
            raise ApiError(400, 50035, body=errors.to_body())

    def _find_route(self, incoming: Incoming) -> Route:
        allowed = False
        for route in self.routes:
            match = route.pattern.match(incoming.path)
            if match is None:
                continue
            if route.method != incoming.method:
                allowed = True
                continue
            incoming.match = match
            return route
        if allowed:
            raise ApiError(405, 0, "405: Method Not Allowed")
        log.warning("fake Discord has no route for %s %s", incoming.method, incoming.path)
        raise ApiError(404, 0, "404: Not Found")

    @staticmethod
    async def _read_body(request: web.Request, incoming: Incoming) -> None:
        if not request.can_read_body:
            return
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            index = 0
            while (part := await reader.next()) is not None:
                name = part.name or ""
                if name == "payload_json":
                    incoming.body = json.loads(await part.text())
                elif part.filename is not None:
                    found = re.fullmatch(r"files\[(\d+)\]", name)
                    position = int(found.group(1)) if found else index
                    incoming.uploads.append(Upload(position, part.filename, bytes(await part.read())))
                    index += 1
            return
        raw = await request.read()
        if raw:
            try:
                incoming.body = json.loads(raw)
            except ValueError:
                raise ApiError(400, 50109, "The request body contains invalid JSON.") from None

    # small helpers -------------------------------------------------------------------------

    def _message_payload(self, message: FakeMessage) -> dict:
        return message.to_payload(http_base=self.state.http_base, application_id=self.state.application_id)

    def _channel(self, incoming: Incoming) -> FakeChannel:
        channel = self.state.channel(incoming.int_arg("channel_id"))
        if channel is None:
            raise ApiError(404, 10003)
        return channel

    def _upload_limit(self, channel: FakeChannel) -> int:
        guild = self.state.guild(channel.guild_id)
        return guild.filesize_limit if guild else 10 * MIB

    def _check_uploads(self, incoming: Incoming, channel: FakeChannel) -> None:
        total = sum(len(u.data) for u in incoming.uploads)
        if total > self._upload_limit(channel):
            raise ApiError(413, 40005)

    def _check_body(self, body: dict, *, create: bool, files: int) -> None:
        if not isinstance(body, dict):
            raise ApiError(400, 50035, body={"code": 50035, "message": "Invalid Form Body", "errors": {}})
        errors = FormErrors()
        validate_message_body(body, errors)
        if files > MAX_FILES:  # "up to 10 files" (developers/reference, Uploading Files)
            errors.add("files", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_FILES} or fewer in length.")
        if errors:
            raise ApiError(400, 50035, body=errors.to_body())
        if create and is_empty_message(body, files):
            raise ApiError(400, 50006)

    @staticmethod
    def _new_attachments(body: dict, uploads: list[Upload]) -> list[FakeAttachment]:
        """Files named by `attachments: [{id: n, filename, description}]` or just uploaded."""
        by_index = {u.index: u for u in uploads}
        attachments = []
        used: set[int] = set()
        for entry in body.get("attachments") or []:
            try:
                index = int(entry.get("id"))
            except (TypeError, ValueError):
                continue
            upload = by_index.get(index)
            if upload is None or index in used:
                continue
            used.add(index)
            attachments.append(
                FakeAttachment(
                    filename=entry.get("filename") or upload.filename,
                    data=upload.data,
                    description=entry.get("description"),
                )
            )
        for upload in uploads:
            if upload.index not in used:
                attachments.append(FakeAttachment(filename=upload.filename, data=upload.data))
        return attachments

    def _create(
        self,
        channel: FakeChannel,
        body: dict,
        uploads: list[Upload],
        *,
        flags: int | None = None,
        interaction: FakeInteraction | None = None,
    ) -> FakeMessage:
        settable = (int(body.get("flags") or 0)) & SETTABLE_FLAGS
        message = FakeMessage(
            id=snowflake(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            author=self.state.bot_user,
            versions=[
                new_version(
                    content=body.get("content") or "",
                    embeds=body.get("embeds") or [],
                    components=body.get("components") or [],
                    attachments=self._new_attachments(body, uploads),
                    flags=settable if flags is None else flags,
                    allowed_mentions=body.get("allowed_mentions"),
                )
            ],
            interaction_id=interaction.id if interaction else None,
            webhook_id=self.state.application_id if interaction else None,
            message_reference=body.get("message_reference"),
            tts=bool(body.get("tts")),
            nonce=body.get("nonce"),
        )
        self.state.messages[message.id] = message
        return message

    def _edit(self, message: FakeMessage, body: dict, uploads: list[Upload]) -> None:
        version = edited_version(message.current, body, self._new_attachments(body, uploads))
        message.versions.append(version)
        message.edited_timestamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())

    async def _announce(self, event: str, message: FakeMessage) -> None:
        """MESSAGE_CREATE/UPDATE/DELETE to the bot, as Discord does (never for ephemeral ones)."""
        if message.ephemeral:
            return
        channel = self.state.channel(message.channel_id)
        is_dm = channel is not None and channel.type == ChannelType.DM
        intent = Intent.DIRECT_MESSAGES if is_dm else Intent.GUILD_MESSAGES
        if event == "MESSAGE_DELETE":
            data: dict = {"id": str(message.id), "channel_id": str(message.channel_id)}
            if message.guild_id is not None:
                data["guild_id"] = str(message.guild_id)
        else:
            data = self._message_payload(message)
        await self.gateway.dispatch_guild_event(event, data, guild_id=message.guild_id, intent=intent)

    def _require(self, channel: FakeChannel, needed: int) -> int:
        """Discord's answer when the bot lacks `needed` in `channel`: 50001 without View Channel,
        50013 for anything else (developers/resources/message, "Create Message" limitations)."""
        have = self.state.bot_permissions_in(channel)
        if not have & Perm.VIEW_CHANNEL:
            raise ApiError(403, 50001)
        if have & needed != needed:
            raise ApiError(403, 50013)
        return have

    def _bot_message_body(self, channel: FakeChannel, body: dict, files: int, *, create: bool) -> dict:
        """Check what posting `body` needs; embeds without Embed Links are dropped, as Discord does."""
        needed = (Perm.SEND_MESSAGES if create else 0) | (Perm.ATTACH_FILES if files else 0)
        have = self._require(channel, needed)
        if body.get("embeds") and not have & Perm.EMBED_LINKS:
            body = {**body, "embeds": []}
            if create and is_empty_message(body, files):
                raise ApiError(400, 50006)
        return body

    def _same_nonce(self, channel: FakeChannel, body: dict) -> FakeMessage | None:
        """With `enforce_nonce`, Discord answers a repeated nonce (same author, same channel, within a
        few minutes) with the message it already created instead of creating another."""
        nonce = body.get("nonce")
        if nonce is None or not body.get("enforce_nonce"):
            return None
        horizon = self.state.now() - NONCE_WINDOW_S
        for message in self.state.messages.values():
            if (
                message.channel_id == channel.id
                and message.nonce is not None
                and str(message.nonce) == str(nonce)
                and not message.deleted
                and message.created_at >= horizon
            ):
                return message
        return None

    # gateway, users, application -----------------------------------------------------------

    async def get_gateway(self, incoming: Incoming) -> Any:
        return {"url": self.gateway_url()}

    async def get_gateway_bot(self, incoming: Incoming) -> Any:
        return {
            "url": self.gateway_url(),
            "shards": 1,
            "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1},
        }

    async def get_me(self, incoming: Incoming) -> Any:
        return {**self.state.bot_user.to_payload(), "verified": True, "mfa_enabled": False, "flags": 0}

    async def get_user(self, incoming: Incoming) -> Any:
        user = self.state.user(incoming.int_arg("user_id"))
        if user is None:
            raise ApiError(404, 10013, "Unknown User")
        return user.to_payload()

    async def create_dm(self, incoming: Incoming) -> Any:
        user = self.state.user(int((incoming.body or {}).get("recipient_id", 0)))
        if user is None:
            raise ApiError(400, 50007, "Cannot send messages to this user")
        return self.state.dm_channel_for(user).to_payload()

    async def get_application(self, incoming: Incoming) -> Any:
        owner = self.state.guilds[0].owner if self.state.guilds else self.state.bot_user
        assert owner is not None
        return {
            "id": str(self.state.application_id),
            "name": self.state.bot_user.username,
            "icon": None,
            "description": "",
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": owner.to_payload(),
            "verify_key": "0" * 64,
            "flags": 0,
            "team": None,
            "bot": self.state.bot_user.to_payload(),
        }

    # application commands ------------------------------------------------------------------

    def _command_scope(self, incoming: Incoming) -> tuple[int | None, list[dict]]:
        if incoming.int_arg("app_id") != self.state.application_id:
            raise ApiError(403, 50001)
        if incoming.match is not None and incoming.match.groupdict().get("guild_id"):
            guild_id = incoming.int_arg("guild_id")
            if self.state.guild(guild_id) is None:
                raise ApiError(403, 50001)
            return guild_id, self.state.guild_commands.setdefault(guild_id, [])
        return None, self.state.global_commands

    async def list_commands(self, incoming: Incoming) -> Any:
        _, commands = self._command_scope(incoming)
        return commands

    async def overwrite_commands(self, incoming: Incoming) -> Any:
        guild_id, commands = self._command_scope(incoming)
        body = incoming.body
        if not isinstance(body, list):
            raise ApiError(400, 50035, body={"code": 50035, "message": "Invalid Form Body", "errors": {}})
        errors = FormErrors()
        validate_command_list(body, errors)
        if len(body) > 100:
            errors.add("_", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length.")
        if errors:
            raise ApiError(400, 50035, body=errors.to_body())
        commands[:] = [stored_command(self.state, guild_id, command) for command in body]
        return commands

    async def upsert_command(self, incoming: Incoming) -> Any:
        guild_id, commands = self._command_scope(incoming)
        errors = FormErrors()
        validate_command(incoming.body, errors, "_")
        if errors:
            raise ApiError(400, 50035, body=errors.to_body())
        stored = stored_command(self.state, guild_id, incoming.body)
        commands[:] = [c for c in commands if c["id"] != stored["id"]] + [stored]
        return stored

    def _find_command(self, incoming: Incoming) -> tuple[list[dict], dict]:
        _, commands = self._command_scope(incoming)
        command_id = incoming.arg("command_id")
        for command in commands:
            if command["id"] == command_id:
                return commands, command
        raise ApiError(404, 10063, "Unknown application command")

    async def get_command(self, incoming: Incoming) -> Any:
        return self._find_command(incoming)[1]

    async def edit_command(self, incoming: Incoming) -> Any:
        _, command = self._find_command(incoming)
        changes = {
            k: v for k, v in (incoming.body or {}).items() if k not in ("id", "type", "application_id")
        }
        errors = FormErrors()
        validate_command({**command, **changes}, errors, "")
        if errors:
            raise ApiError(400, 50035, body=errors.to_body())
        command.update(changes)
        return command

    async def delete_command(self, incoming: Incoming) -> Any:
        commands, command = self._find_command(incoming)
        commands.remove(command)
        return NO_CONTENT

    # interactions --------------------------------------------------------------------------

    async def interaction_callback(self, incoming: Incoming) -> Any:
        interaction = self.state.interactions.get(incoming.int_arg("interaction_id"))
        if interaction is None or interaction.token != incoming.arg("token"):
            raise ApiError(404, 10062)
        if interaction.response is not None:
            raise ApiError(400, 40060)
        if interaction.answered_late:
            interaction.late_callbacks += 1
            raise ApiError(404, 10062)
        body = incoming.body if isinstance(incoming.body, dict) else {}
        response_type = body.get("type")
        data = body.get("data") or {}
        channel = self.state.channel(interaction.channel_id)
        assert channel is not None
        is_component = interaction.type in (InteractionType.MESSAGE_COMPONENT, InteractionType.MODAL_SUBMIT)
        message: FakeMessage | None = None
        if response_type == ResponseType.CHANNEL_MESSAGE:
            self._check_body(data, create=True, files=len(incoming.uploads))
            self._check_uploads(incoming, channel)
            message = self._create(channel, data, incoming.uploads, interaction=interaction)
        elif response_type == ResponseType.DEFERRED_CHANNEL_MESSAGE:
            if int(data.get("flags") or 0) & ~FLAG_EPHEMERAL:
                # "the only valid message flag you may use is EPHEMERAL" (receiving-and-responding)
                raise ApiError(400, 50035, body=_form_error("data.flags", "Only EPHEMERAL may be set"))
            flags = FLAG_LOADING | (int(data.get("flags") or 0) & FLAG_EPHEMERAL)
            message = self._create(channel, {}, [], flags=flags, interaction=interaction)
        elif (
            response_type in (ResponseType.DEFERRED_UPDATE_MESSAGE, ResponseType.UPDATE_MESSAGE)
            and is_component
        ):
            message = interaction.original
            if message is None:
                raise ApiError(400, 50035, "Interaction has no message to update")
            if response_type == ResponseType.UPDATE_MESSAGE:
                self._check_body(data, create=False, files=len(incoming.uploads))
                self._check_uploads(incoming, channel)
                self._edit(message, data, incoming.uploads)
        elif (
            response_type == ResponseType.AUTOCOMPLETE_RESULT
            and interaction.type == InteractionType.AUTOCOMPLETE
        ):
            if len(data.get("choices") or []) > 25:
                raise ApiError(400, 50035, "Must be 25 or fewer in length.")
        elif response_type == ResponseType.MODAL and interaction.type != InteractionType.MODAL_SUBMIT:
            pass
        else:
            raise ApiError(400, 50035, f"Interaction response type {response_type} is not valid here")
        interaction.response = InteractionResponse(
            type=response_type, data=data, latency_s=self.state.now() - interaction.created_at
        )
        if message is not None:
            interaction.original_message_id = message.id
            if response_type in (ResponseType.CHANNEL_MESSAGE, ResponseType.DEFERRED_CHANNEL_MESSAGE):
                await self._announce("MESSAGE_CREATE", message)
            elif response_type == ResponseType.UPDATE_MESSAGE:
                await self._announce("MESSAGE_UPDATE", message)
        if incoming.query.get("with_response") not in ("1", "true", "True"):
            return NO_CONTENT
        result: dict[str, Any] = {
            "interaction": {
                "id": str(interaction.id),
                "type": interaction.type,
                "response_message_id": str(message.id) if message else None,
                "response_message_loading": bool(message and message.loading),
                "response_message_ephemeral": bool(message and message.ephemeral),
            },
            "resource": {"type": response_type},
        }
        if message is not None and response_type != ResponseType.DEFERRED_UPDATE_MESSAGE:
            result["resource"]["message"] = self._message_payload(message)
        return result

    def _webhook_interaction(self, incoming: Incoming) -> FakeInteraction:
        if incoming.int_arg("app_id") != self.state.application_id:
            raise ApiError(404, 10015)
        interaction = self.state.interaction_by_token(incoming.arg("token"))
        if interaction is None or interaction.token_expired:
            raise ApiError(401, 50027)
        if interaction.response is None:
            raise ApiError(404, 10015)
        return interaction

    def _webhook_message(self, interaction: FakeInteraction, message_id: str) -> FakeMessage:
        if message_id == "@original":
            message = interaction.original
        else:
            message = self.state.messages.get(int(message_id)) if message_id.isdigit() else None
            if message is not None and not interaction.owns(message):
                message = None
        if message is None or message.deleted:
            raise ApiError(404, 10008)
        return message

    async def webhook_send(self, incoming: Incoming) -> Any:
        interaction = self._webhook_interaction(incoming)
        channel = self.state.channel(interaction.channel_id)
        assert channel is not None
        body = incoming.body if isinstance(incoming.body, dict) else {}
        self._check_body(body, create=True, files=len(incoming.uploads))
        self._check_uploads(incoming, channel)
        original = interaction.original
        replaces_thinking = (
            original is not None
            and original.loading
            and interaction.response is not None
            and interaction.response.type == ResponseType.DEFERRED_CHANNEL_MESSAGE
        )
        if replaces_thinking:
            # Discord: the first follow-up after a deferred reply becomes that reply
            assert original is not None
            self._edit(original, {k: v for k, v in body.items() if k != "flags"}, incoming.uploads)
            message = original
            await self._announce("MESSAGE_UPDATE", message)
        else:
            flags = int(body.get("flags") or 0) & SETTABLE_FLAGS
            message = self._create(channel, body, incoming.uploads, flags=flags, interaction=interaction)
            await self._announce("MESSAGE_CREATE", message)
        interaction.followup_ids.append(message.id)
        if incoming.query.get("wait") in ("0", "false", "False"):
            return NO_CONTENT
        return self._message_payload(message)

    async def webhook_get(self, incoming: Incoming) -> Any:
        interaction = self._webhook_interaction(incoming)
        return self._message_payload(self._webhook_message(interaction, incoming.arg("message_id")))

    async def webhook_edit(self, incoming: Incoming) -> Any:
        interaction = self._webhook_interaction(incoming)
        message = self._webhook_message(interaction, incoming.arg("message_id"))
        body = incoming.body if isinstance(incoming.body, dict) else {}
        self._check_body(body, create=False, files=len(incoming.uploads))
        channel = self.state.channel(message.channel_id)
        assert channel is not None
        self._check_uploads(incoming, channel)
        self._edit(message, body, incoming.uploads)
        await self._announce("MESSAGE_UPDATE", message)
        return self._message_payload(message)

    async def webhook_delete(self, incoming: Incoming) -> Any:
        interaction = self._webhook_interaction(incoming)
        message = self._webhook_message(interaction, incoming.arg("message_id"))
        message.deleted_at = self.state.now()
        await self._announce("MESSAGE_DELETE", message)
        return NO_CONTENT

    # channels and messages -----------------------------------------------------------------

    async def get_channel(self, incoming: Incoming) -> Any:
        channel = self._channel(incoming)
        self._require(channel, Perm.VIEW_CHANNEL)
        return channel.to_payload()

    async def typing(self, incoming: Incoming) -> Any:
        self._require(self._channel(incoming), Perm.SEND_MESSAGES)
        return NO_CONTENT

    async def create_message(self, incoming: Incoming) -> Any:
        channel = self._channel(incoming)
        body = incoming.body if isinstance(incoming.body, dict) else {}
        self._check_body(body, create=True, files=len(incoming.uploads))
        body = self._bot_message_body(channel, body, len(incoming.uploads), create=True)
        self._check_uploads(incoming, channel)
        earlier = self._same_nonce(channel, body)
        if earlier is not None:
            return self._message_payload(earlier)
        message = self._create(
            channel,
            body,
            incoming.uploads,
            flags=int(body.get("flags") or 0) & SETTABLE_FLAGS & ~FLAG_EPHEMERAL,
        )
        await self._announce("MESSAGE_CREATE", message)
        return self._message_payload(message)

    def _channel_message(self, incoming: Incoming) -> FakeMessage:
        channel = self._channel(incoming)
        message = self.state.messages.get(incoming.int_arg("message_id"))
        if message is None or message.deleted or message.channel_id != channel.id or message.ephemeral:
            raise ApiError(404, 10008)
        return message

    async def get_message(self, incoming: Incoming) -> Any:
        self._require(self._channel(incoming), Perm.VIEW_CHANNEL | Perm.READ_MESSAGE_HISTORY)
        return self._message_payload(self._channel_message(incoming))

    async def list_messages(self, incoming: Incoming) -> Any:
        """Without Read Message History Discord answers an empty list, not an error
        (developers/resources/message, "Get Channel Messages"); without View Channel, 50001."""
        channel = self._channel(incoming)
        if not self._require(channel, Perm.VIEW_CHANNEL) & Perm.READ_MESSAGE_HISTORY:
            return []
        limit = max(1, min(100, int(incoming.query.get("limit", 50))))
        visible = [
            m
            for m in self.state.messages.values()
            if m.channel_id == channel.id and not m.deleted and not m.ephemeral
        ]
        before = incoming.query.get("before")
        if before:
            visible = [m for m in visible if m.id < int(before)]
        after = incoming.query.get("after")
        if after:
            visible = [m for m in visible if m.id > int(after)]
        visible.sort(key=lambda m: m.id, reverse=True)
        return [self._message_payload(m) for m in visible[:limit]]

    async def edit_message(self, incoming: Incoming) -> Any:
        message = self._channel_message(incoming)
        if message.author.id != self.state.bot_user.id:
            raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        body = incoming.body if isinstance(incoming.body, dict) else {}
        self._check_body(body, create=False, files=len(incoming.uploads))
        channel = self._channel(incoming)
        body = self._bot_message_body(channel, body, len(incoming.uploads), create=False)
        self._check_uploads(incoming, channel)
        self._edit(message, body, incoming.uploads)
        await self._announce("MESSAGE_UPDATE", message)
        return self._message_payload(message)

    async def delete_message(self, incoming: Incoming) -> Any:
        message = self._channel_message(incoming)
        needed = Perm.VIEW_CHANNEL if message.author.id == self.state.bot_user.id else Perm.MANAGE_MESSAGES
        self._require(self._channel(incoming), needed)
        message.deleted_at = self.state.now()
        await self._announce("MESSAGE_DELETE", message)
        return NO_CONTENT

    # guilds --------------------------------------------------------------------------------

    def _guild(self, incoming: Incoming) -> FakeGuild:
        guild = self.state.guild(incoming.int_arg("guild_id"))
        if guild is None:
            raise ApiError(404, 10004, "Unknown Guild")
        return guild

    async def get_guild(self, incoming: Incoming) -> Any:
        guild = self._guild(incoming)
        payload = guild.to_payload(include_members=[])
        for key in ("members", "channels", "threads", "presences", "voice_states"):
            payload.pop(key, None)
        return payload

    async def get_guild_channels(self, incoming: Incoming) -> Any:
        return [c.to_payload() for c in self._guild(incoming).channels]

    async def get_guild_roles(self, incoming: Incoming) -> Any:
        return [r.to_payload() for r in self._guild(incoming).all_roles]

    async def list_members(self, incoming: Incoming) -> Any:
        guild = self._guild(incoming)
        limit = max(1, min(1000, int(incoming.query.get("limit", 1))))
        return [m.to_payload() for m in guild.members[:limit]]

    async def get_member(self, incoming: Incoming) -> Any:
        member = self._guild(incoming).member(incoming.int_arg("user_id"))
        if member is None:
            raise ApiError(404, 10007, "Unknown Member")
        return member.to_payload()

    # the CDN stand-in ----------------------------------------------------------------------

    async def serve_attachment(self, request: web.Request) -> web.StreamResponse:
        attachment_id = int(request.match_info["attachment_id"])
        attachment = self.state.uploads.get(attachment_id)
        if attachment is None:
            for message in self.state.messages.values():
                for version in message.versions:
                    attachment = next((a for a in version.attachments if a.id == attachment_id), None)
                    if attachment is not None:
                        break
                if attachment is not None:
                    break
        if attachment is None:
            raise web.HTTPNotFound()
        return web.Response(body=attachment.data, content_type=attachment.content_type)
