"""How records map onto SQLite rows: times as integer milliseconds, jobs as columns plus JSON.

Jobs keep the fields that are queried, indexed or compare-and-set as real columns and every other
field in the JSON `data` column, so a new `Job` field needs no migration.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.core.jobs import Job, JobState
from bot.core.store.base import FINAL_STATES, UserRecord, scrub_text, to_store_time

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_ms(value: datetime | None) -> int | None:
    if value is None:
        return None
    return (to_store_time(value) - EPOCH) // _MS


def from_ms(value: int | None) -> datetime | None:
    return None if value is None else EPOCH + timedelta(milliseconds=value)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):  # a future Job field holding a time: Job.from_dict parses ISO
        return to_store_time(value).isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def dumps(value: Any) -> str:
    return json.dumps(scrub_text(value), ensure_ascii=False, separators=(",", ":"), default=_json_default)


# Job fields kept as real columns (queried, indexed or compare-and-set); all others live in `data`.
COLUMNS: tuple[str, ...] = (
    "id",
    "user_id",
    "guild_id",
    "state",
    "kind",
    "model",
    "created_at",
    "started_at",
    "finished_at",
    "lease_owner",
    "lease_expires_at",
    "attempts",
    "cancel_requested",
    "gpu_seconds",
)
COLUMN_SET = frozenset(COLUMNS)
TIME_COLUMNS = frozenset({"created_at", "started_at", "finished_at", "lease_expires_at"})
SELECT = ", ".join((*COLUMNS, "data"))
INSERT_JOB = f"INSERT INTO jobs ({SELECT}) VALUES ({', '.join('?' * (len(COLUMNS) + 1))})"
FINAL = tuple(s.value for s in FINAL_STATES)
USER_COLUMNS: tuple[str, ...] = (
    "user_id",
    "banned",
    "ban_reason",
    "banned_by",
    "banned_at",
    "max_queued",
    "daily_gpu_seconds",
    "jobs_total",
    "gpu_seconds_total",
)
USER_SELECT = ", ".join(USER_COLUMNS)


def column_value(name: str, value: Any) -> Any:
    if name in TIME_COLUMNS:
        return to_ms(value)
    if name == "cancel_requested":
        return int(bool(value))
    if name == "state":
        return JobState(value).value
    if isinstance(value, str):
        return scrub_text(value)
    return value


def job_row(job: Job) -> list[Any]:
    """The values of `INSERT_JOB` for one job."""
    data = job.to_dict()
    values = [column_value(name, data.pop(name)) for name in COLUMNS]
    values.append(dumps(data))
    return values


def job_from_row(row: Sequence[Any]) -> Job:
    data = json.loads(row[-1])
    for i, name in enumerate(COLUMNS):
        value = row[i]
        if name in TIME_COLUMNS:
            value = from_ms(value)
        elif name == "cancel_requested":
            value = bool(value)
        data[name] = value
    return Job.from_dict(data)


def user_from_row(row: Sequence[Any]) -> UserRecord:
    return UserRecord(
        user_id=row[0],
        banned=bool(row[1]),
        ban_reason=row[2],
        banned_by=row[3],
        banned_at=from_ms(row[4]),
        max_queued=row[5],
        daily_gpu_seconds=row[6],
        jobs_total=row[7],
        gpu_seconds_total=float(row[8]),
    )


def set_clause(changes: dict[str, Any]) -> tuple[str, list[Any]]:
    """`col = ?, …, data = json_set(data, '$.k', json(?), …)` for a validated partial job update."""
    parts: list[str] = []
    params: list[Any] = []
    json_paths: list[str] = []
    json_params: list[Any] = []
    for key, value in changes.items():
        if key in COLUMN_SET:
            parts.append(f"{key} = ?")
            params.append(column_value(key, value))
        else:  # key is a validated Job field name, safe to put in the path
            json_paths.append(f"'$.{key}', json(?)")
            json_params.append(dumps(value))
    if json_paths:
        parts.append(f"data = json_set(data, {', '.join(json_paths)})")
        params.extend(json_params)
    return ", ".join(parts), params
