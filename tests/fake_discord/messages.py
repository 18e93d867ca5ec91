"""Messages as the fake Discord records them: every version, the files' bytes, who would be pinged.

A message keeps its whole edit history (`versions`, oldest first) so tests can assert how
often and how fast progress edits came, and what each one said. Discord's validation of
message bodies (lengths, embed totals, component shapes, empty messages) lives here too,
so a bot that would be refused by Discord is refused by the fake with the same error code.
"""

from __future__ import annotations

import logging
import mimetypes
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .models import FakeUser, iso_now, snowflake

log = logging.getLogger(__name__)

FLAG_SUPPRESS_EMBEDS = 1 << 2
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
FLAG_SUPPRESS_NOTIFICATIONS = 1 << 12
FLAG_COMPONENTS_V2 = 1 << 15
SETTABLE_FLAGS = FLAG_SUPPRESS_EMBEDS | FLAG_EPHEMERAL | FLAG_SUPPRESS_NOTIFICATIONS | FLAG_COMPONENTS_V2

BUTTON = 2
ACTION_ROW = 1
SELECT_TYPES = {3, 5, 6, 7, 8}

USER_MENTION = re.compile(r"<@!?(\d+)>")
ROLE_MENTION = re.compile(r"<@&(\d+)>")
EVERYONE_MENTION = re.compile(r"@(everyone|here)")


@dataclass(eq=False)
class FakeAttachment:
    filename: str
    data: bytes = field(repr=False)
    content_type: str | None = None
    description: str | None = None
    id: int = field(default_factory=snowflake)

    def __post_init__(self) -> None:
        if self.content_type is None:
            self.content_type = mimetypes.guess_type(self.filename)[0] or "application/octet-stream"

    @property
    def size(self) -> int:
        return len(self.data)

    def url(self, http_base: str, channel_id: int) -> str:
        return f"{http_base}/attachments/{channel_id}/{self.id}/{self.filename}"

    def to_payload(self, *, http_base: str, channel_id: int) -> dict:
        url = self.url(http_base, channel_id)
        payload: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": url,
            "proxy_url": url,
            "content_type": self.content_type,
        }
        if self.description is not None:
            payload["description"] = self.description
        return payload


@dataclass(frozen=True)
class Pings:
    """Who a message's content would notify, given its `allowed_mentions`."""

    everyone: bool = False
    users: frozenset[int] = frozenset()
    roles: frozenset[int] = frozenset()

    def __bool__(self) -> bool:
        return self.everyone or bool(self.users) or bool(self.roles)


def pings_of(content: str, allowed_mentions: dict | None) -> Pings:
    """Discord's rule: without `allowed_mentions` every mention in the content pings."""
    parse = (
        {"everyone", "users", "roles"} if allowed_mentions is None else set(allowed_mentions.get("parse", []))
    )
    allowed_users = {int(u) for u in (allowed_mentions or {}).get("users", [])}
    allowed_roles = {int(r) for r in (allowed_mentions or {}).get("roles", [])}
    users = {int(m) for m in USER_MENTION.findall(content)}
    roles = {int(m) for m in ROLE_MENTION.findall(content)}
    return Pings(
        everyone="everyone" in parse and bool(EVERYONE_MENTION.search(content)),
        users=frozenset(users if "users" in parse else users & allowed_users),
        roles=frozenset(roles if "roles" in parse else roles & allowed_roles),
    )


@dataclass(frozen=True)
class MessageVersion:
    """One state of a message: the original post or the result of one edit."""

    at: float  # time.monotonic() when Discord accepted it
    content: str
    embeds: list[dict]
    components: list[dict]
    attachments: list[FakeAttachment]
    flags: int
    allowed_mentions: dict | None


@dataclass(eq=False)
class FakeMessage:
    id: int
    channel_id: int
    guild_id: int | None
    author: FakeUser
    versions: list[MessageVersion]
    interaction_id: int | None = None  # set for interaction responses and follow-ups
    webhook_id: int | None = None
    message_reference: dict | None = None
    tts: bool = False
    nonce: str | int | None = None
    timestamp: str = field(default_factory=iso_now)
    edited_timestamp: str | None = None
    deleted_at: float | None = None

    # what tests read -------------------------------------------------------------------

    @property
    def current(self) -> MessageVersion:
        return self.versions[-1]

    @property
    def content(self) -> str:
        return self.current.content

    @property
    def embeds(self) -> list[dict]:
        return self.current.embeds

    @property
    def embed(self) -> dict | None:
        return self.current.embeds[0] if self.current.embeds else None

    @property
    def components(self) -> list[dict]:
        return self.current.components

    @property
    def attachments(self) -> list[FakeAttachment]:
        return self.current.attachments

    @property
    def attachment(self) -> FakeAttachment | None:
        return self.current.attachments[0] if self.current.attachments else None

    @property
    def flags(self) -> int:
        return self.current.flags

    @property
    def allowed_mentions(self) -> dict | None:
        return self.current.allowed_mentions

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        """A deferred interaction response still showing "… is thinking"."""
        return bool(self.flags & FLAG_LOADING)

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    @property
    def edits(self) -> list[MessageVersion]:
        return self.versions[1:]

    @property
    def created_at(self) -> float:
        return self.versions[0].at

    @property
    def text(self) -> str:
        """Content plus every embed's visible text, for `"seed" in message.text` style checks."""
        parts = [self.content]
        for embed in self.embeds:
            parts.extend(_embed_texts(embed))
        return "\n".join(p for p in parts if p)

    def iter_components(self) -> Iterator[dict]:
        """Every interactive component, flattened out of action rows (and v2 containers)."""
        yield from _walk_components(self.components)

    @property
    def buttons(self) -> list[dict]:
        return [c for c in self.iter_components() if c.get("type") == BUTTON]

    @property
    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in self.iter_components() if "custom_id" in c]

    def component(self, key: str) -> dict:
        """A component by custom_id or label."""
        for component in self.iter_components():
            if key in (component.get("custom_id"), component.get("label")):
                return component
        raise KeyError(f"message {self.id} has no component {key!r}; it has {self.custom_ids}")

    def pings(self) -> Pings:
        """Everyone any version would mention; strict on purpose (Discord highlights edits too)."""
        result = Pings()
        for version in self.versions:
            found = pings_of(version.content, version.allowed_mentions)
            result = Pings(
                everyone=result.everyone or found.everyone,
                users=result.users | found.users,
                roles=result.roles | found.roles,
            )
        return result

    def __repr__(self) -> str:
        return (
            f"<FakeMessage id={self.id} channel={self.channel_id} content={self.content[:60]!r} "
            f"embeds={len(self.embeds)} files={[a.filename for a in self.attachments]} "
            f"edits={len(self.edits)}{' ephemeral' if self.ephemeral else ''}"
            f"{' loading' if self.loading else ''}{' deleted' if self.deleted else ''}>"
        )

    # payloads ----------------------------------------------------------------------------

    def to_payload(self, *, http_base: str, application_id: int | None = None) -> dict:
        version = self.current
        pings = pings_of(version.content, version.allowed_mentions)
        payload: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "type": 0 if self.interaction_id is None else 20,
            "author": self.author.to_payload(),
            "content": version.content,
            "timestamp": self.timestamp,
            "edited_timestamp": self.edited_timestamp,
            "tts": self.tts,
            "mention_everyone": pings.everyone,
            "mentions": [],
            "mention_roles": [str(r) for r in pings.roles],
            "attachments": [
                a.to_payload(http_base=http_base, channel_id=self.channel_id) for a in version.attachments
            ],
            "embeds": version.embeds,
            "reactions": [],
            "pinned": False,
            "flags": version.flags,
            "components": version.components,
        }
        if self.guild_id is not None:
            payload["guild_id"] = str(self.guild_id)
        if self.webhook_id is not None:
            payload["webhook_id"] = str(self.webhook_id)
        if application_id is not None and self.interaction_id is not None:
            payload["application_id"] = str(application_id)
        if self.message_reference is not None:
            payload["message_reference"] = self.message_reference
        if self.nonce is not None:
            payload["nonce"] = self.nonce
        return payload


def _embed_texts(embed: dict) -> Iterator[str]:
    for key in ("title", "description"):
        if embed.get(key):
            yield str(embed[key])
    for key in ("author", "footer"):
        part = embed.get(key) or {}
        text = part.get("name") or part.get("text")
        if text:
            yield str(text)
    for embed_field in embed.get("fields") or []:
        yield str(embed_field.get("name", ""))
        yield str(embed_field.get("value", ""))


def _walk_components(components: list[dict]) -> Iterator[dict]:
    for component in components or []:
        children = component.get("components")
        if children is not None:
            yield from _walk_components(children)
        accessory = component.get("accessory")
        if accessory is not None:
            yield from _walk_components([accessory])
        if component.get("type") not in (ACTION_ROW, None) and children is None:
            yield component


# Discord's validation ----------------------------------------------------------------------


class FormErrors:
    """Collects Discord-style `Invalid Form Body` errors (code 50035)."""

    def __init__(self) -> None:
        self.errors: dict[str, Any] = {}

    def add(self, path: str, code: str, message: str) -> None:
        """`path` is dotted ("embeds.0.title"); "" files the error under the body itself."""
        node = self.errors
        for part in filter(None, path.split(".")):
            node = node.setdefault(part, {})
        node.setdefault("_errors", []).append({"code": code, "message": message})

    def max_length(self, path: str, value: Any, limit: int) -> None:
        if isinstance(value, str) and len(value) > limit:
            self.add(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")

    def __bool__(self) -> bool:
        return bool(self.errors)

    def to_body(self) -> dict:
        return {"code": 50035, "message": "Invalid Form Body", "errors": self.errors}


def validate_message_body(body: dict, errors: FormErrors) -> None:
    """Lengths and shapes Discord checks on message create and edit."""
    errors.max_length("content", body.get("content"), 2000)
    embeds = body.get("embeds") or []
    if len(embeds) > 10:
        errors.add("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
    total = 0
    for i, embed in enumerate(embeds):
        errors.max_length(f"embeds.{i}.title", embed.get("title"), 256)
        errors.max_length(f"embeds.{i}.description", embed.get("description"), 4096)
        errors.max_length(f"embeds.{i}.footer.text", (embed.get("footer") or {}).get("text"), 2048)
        errors.max_length(f"embeds.{i}.author.name", (embed.get("author") or {}).get("name"), 256)
        fields = embed.get("fields") or []
        if len(fields) > 25:
            errors.add(f"embeds.{i}.fields", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        for j, embed_field in enumerate(fields):
            for key, limit in (("name", 256), ("value", 1024)):
                value = embed_field.get(key)
                if not isinstance(value, str) or not value:
                    errors.add(f"embeds.{i}.fields.{j}.{key}", "BASE_TYPE_REQUIRED", "This field is required")
                else:
                    errors.max_length(f"embeds.{i}.fields.{j}.{key}", value, limit)
        total += sum(len(text) for text in _embed_texts(embed))
    if total > 6000:
        errors.add("embeds", "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000")
    if not (body.get("flags") or 0) & FLAG_COMPONENTS_V2:
        _validate_action_rows(body.get("components") or [], errors)


def _validate_action_rows(rows: list[dict], errors: FormErrors) -> None:
    if len(rows) > 5:
        errors.add("components", "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length.")
    seen: set[str] = set()
    for i, row in enumerate(rows):
        if row.get("type") != ACTION_ROW:
            errors.add(f"components.{i}.type", "UNION_TYPE_CHOICES", 'Value of field "type" must be 1.')
            continue
        children = row.get("components") or []
        if not 1 <= len(children) <= 5:
            errors.add(
                f"components.{i}.components", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length."
            )
        if len(children) > 1 and any(c.get("type") != BUTTON for c in children):
            errors.add(
                f"components.{i}.components",
                "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                "A select menu must be alone in its row",
            )
        for j, child in enumerate(children):
            path = f"components.{i}.components.{j}"
            errors.max_length(f"{path}.label", child.get("label"), 80)
            custom_id = child.get("custom_id")
            if child.get("type") == BUTTON and child.get("style") == 5:
                if not child.get("url"):
                    errors.add(f"{path}.url", "BASE_TYPE_REQUIRED", "This field is required")
                if custom_id is not None:
                    errors.add(
                        f"{path}.custom_id",
                        "BUTTON_COMPONENT_CUSTOM_ID_NOT_ALLOWED",
                        "Link buttons have none",
                    )
                continue
            if not custom_id:
                errors.add(f"{path}.custom_id", "BASE_TYPE_REQUIRED", "This field is required")
                continue
            errors.max_length(f"{path}.custom_id", custom_id, 100)
            if custom_id in seen:
                errors.add(
                    f"{path}.custom_id",
                    "COMPONENT_CUSTOM_ID_DUPLICATED",
                    "Component custom id cannot be duplicated",
                )
            seen.add(custom_id)


def is_empty_message(body: dict, files: int) -> bool:
    return not (
        body.get("content")
        or body.get("embeds")
        or body.get("components")
        or body.get("sticker_ids")
        or body.get("poll")
        or files
    )


def new_version(
    *,
    content: str,
    embeds: list[dict],
    components: list[dict],
    attachments: list[FakeAttachment],
    flags: int,
    allowed_mentions: dict | None,
) -> MessageVersion:
    return MessageVersion(
        at=time.monotonic(),
        content=content,
        embeds=embeds,
        components=components,
        attachments=attachments,
        flags=flags,
        allowed_mentions=allowed_mentions,
    )


def edited_version(previous: MessageVersion, body: dict, new_files: list[FakeAttachment]) -> MessageVersion:
    """Apply a PATCH body: absent keys keep their value; `attachments` lists the ones to keep."""
    attachments = list(previous.attachments)
    if "attachments" in body and body["attachments"] is not None:
        keep = {str(a.get("id")) for a in body["attachments"]}
        attachments = [a for a in previous.attachments if str(a.id) in keep]
    attachments.extend(new_files)
    flags = previous.flags & ~FLAG_LOADING
    if body.get("flags") is not None:
        flags = (flags & ~FLAG_SUPPRESS_EMBEDS) | (int(body["flags"]) & FLAG_SUPPRESS_EMBEDS)
    return MessageVersion(
        at=time.monotonic(),
        content=(body["content"] or "") if "content" in body else previous.content,
        embeds=(body["embeds"] or []) if "embeds" in body else previous.embeds,
        components=(body["components"] or []) if "components" in body else previous.components,
        attachments=attachments,
        flags=flags,
        allowed_mentions=body.get("allowed_mentions", previous.allowed_mentions),
    )
