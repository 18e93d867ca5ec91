"""How records map onto Mongo documents.

A job is one document with `_id` = job id, times as BSON dates (naive UTC on the wire, made aware
on read), plus `seq`, an increasing number that orders jobs created in the same millisecond.
Users, guild settings and meta use the user/guild id or key as `_id`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from bot.core.jobs import Job, JobState
from bot.core.store.base import FINAL_STATES, JOB_DATETIME_FIELDS, UserRecord, scrub_text, to_store_time

log = logging.getLogger(__name__)

FINAL = [s.value for s in FINAL_STATES]
USER_FIELDS = (
    "banned",
    "ban_reason",
    "banned_by",
    "banned_at",
    "max_queued",
    "daily_gpu_seconds",
    "jobs_total",
    "gpu_seconds_total",
)


def to_bson_time(value: datetime | None) -> datetime | None:
    """Naive UTC to the millisecond: what BSON stores, whatever the client's tz settings."""
    return None if value is None else to_store_time(value).replace(tzinfo=None)


def from_bson_time(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def mongo_value(key: str, value: Any) -> Any:
    if key in JOB_DATETIME_FIELDS:
        return to_bson_time(value)
    if isinstance(value, JobState):
        return value.value
    return scrub_text(value)


def job_doc(job: Job, seq: int) -> dict[str, Any]:
    data = job.to_dict()
    doc = {key: mongo_value(key, value) for key, value in data.items() if key != "id"}
    doc["_id"] = job.id
    doc["seq"] = seq
    return doc


def job_from_doc(doc: Mapping[str, Any]) -> Job:
    data = dict(doc)
    data["id"] = data.pop("_id")
    data.pop("seq", None)
    for key in JOB_DATETIME_FIELDS:
        data[key] = from_bson_time(data.get(key))
    return Job.from_dict(data)


def user_from_doc(user_id: str, doc: Mapping[str, Any] | None) -> UserRecord:
    if not doc:
        return UserRecord(user_id=user_id)
    kw = {k: doc[k] for k in USER_FIELDS if k in doc}
    if "banned_at" in kw:
        kw["banned_at"] = from_bson_time(kw["banned_at"])
    return UserRecord(user_id=user_id, **kw)


class Seq:
    """Increasing numbers to order records created in the same millisecond (time-based, so two
    processes writing the same database still interleave in roughly real order)."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, time.time_ns())
            return self._last
