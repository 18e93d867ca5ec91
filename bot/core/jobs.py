"""The job record: one per request, storable and resumable, with no Discord objects in it.

The same record is the queue's state (state, lease, attempts) and the per-user request log
(who, where, what, timings, result), so a restart resumes from exactly what was logged.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)


class JobState(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (JobState.COMPLETE, JobState.FAILED, JobState.CANCELLED)


class Source(StrEnum):
    DISCORD = "discord"
    API = "api"
    CLI = "cli"


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Job:
    """A generation request and its life in the queue.

    `params` is the validated request as a plain dict (generation.params `to_dict()`), so it
    can be stored in SQLite or Mongo unchanged and rebuilt after a restart.
    Times are timezone-aware UTC datetimes.
    """

    kind: str  # "image" | "video"
    model: str
    prompt: str
    params: dict[str, Any]
    user_id: str  # Discord user id, or "api:<key name>" for REST callers
    user_name: str
    source: Source = Source.DISCORD
    guild_id: str | None = None
    channel_id: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    id: str = field(default_factory=new_job_id)
    state: JobState = JobState.QUEUED
    priority: int = 0  # higher first; set from roles in settings
    parent_id: str | None = None  # the result this one was made from (see `lineage`)
    lineage: str | None = None  # how, in words: rerolled, edited, varied, animated, upscaled
    attempts: int = 0
    max_tries: int = 2
    created_at: datetime = field(default_factory=utcnow)  # queued
    started_at: datetime | None = None
    finished_at: datetime | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    queue_wait_s: float | None = None
    gpu_seconds: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    cancel_requested: bool = False
    result_path: str | None = None  # file on the bot's disk (served by the web server)
    result_url: str | None = None
    result_message_id: str | None = None  # set once delivered: delivery is idempotent
    result_bytes: int | None = None
    status_message_id: str | None = None  # the "queued / progress" message we edit
    upload_limit_bytes: int | None = None  # the channel's attachment limit when it was asked
    bot_permissions: int | None = None  # the bot's permission bits in that channel when it was asked
    nsfw_action: str = "blackout"  # if the safety checker flags it: blackout, spoiler or refuse
    nsfw_detected: bool = False  # the safety checker flagged the result
    spoiler: bool = False  # the requester's saved default: post the result behind a spoiler
    #: what validation adjusted (a frame count snapped to the model's rule...), as the requester was told
    notes: list[str] = field(default_factory=list)

    @property
    def units(self) -> int:
        """Queue places the job takes: one per image it makes (a video is one)."""
        return max(1, int(self.params.get("count") or 1)) if self.kind == "image" else 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state.value
        d["source"] = self.source.value
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        kw["state"] = JobState(kw.get("state", JobState.QUEUED))
        kw["source"] = Source(kw.get("source", Source.DISCORD))
        for key in ("created_at", "started_at", "finished_at", "lease_expires_at"):
            value = kw.get(key)
            if isinstance(value, str):
                value = datetime.fromisoformat(value)
            if isinstance(value, datetime) and value.tzinfo is None:
                value = value.replace(tzinfo=UTC)  # Mongo hands back naive UTC datetimes
            kw[key] = value
        return cls(**kw)
