"""The storage contract: records and the abstract `Store` every driver implements.

One interface, two real drivers (SQLite via aiosqlite, MongoDB via motor), and one contract test
suite run against both (tests/store/). Jobs are `bot.core.jobs.Job`: the same record is the queue entry
and the per-user request log line, so there is nothing to keep in sync between the two.

Conventions every driver follows, so callers never care which one is configured:
- every awaited write is durable when it returns (fsynced WAL / journaled majority write);
- connection-level failures surface as :class:`StoreUnavailable` (the original error chained),
  never as a driver-specific exception, so the write buffer and the queue can handle them;
- datetimes are tz-aware UTC and kept to the millisecond (BSON's precision; SQLite truncates the
  same way so both drivers hand back identical records);
- text round-trips exactly; lone UTF-16 surrogates, which neither UTF-8 SQLite nor BSON can hold,
  are replaced by U+FFFD instead of failing the write.
"""

from __future__ import annotations

import logging
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Self

from bot.core.jobs import Job, JobState
from generation.errors import UserError
from generation.files import part_paths

log = logging.getLogger(__name__)

#: what happens to a picture the safety checker flags (see bot.core.moderation.nsfw_action)
NsfwPolicy = Literal["blackout", "spoiler", "refuse"]
NSFW_POLICIES: tuple[str, ...] = ("blackout", "spoiler", "refuse")

FINAL_STATES: frozenset[JobState] = frozenset(s for s in JobState if s.is_final)
#: the final states `recent_trouble` lists: what went wrong or was stopped
TROUBLE_STATES: tuple[JobState, ...] = (JobState.FAILED, JobState.CANCELLED)

#: everything a store keeps, in the order `python -m bot.store migrate` copies it
COLLECTIONS: tuple[str, ...] = ("jobs", "users", "guild_settings", "audit", "meta", "defaults")

#: whose saved request defaults a record holds (bot.core.defaults): a member's, a channel's or a
#: guild's (name ""), or one of a member's named presets
DEFAULT_SCOPES: tuple[str, ...] = ("member", "channel", "guild", "preset")

#: Job fields a caller may change through update_job / finish_job (the id never changes).
JOB_FIELDS: frozenset[str] = frozenset(f.name for f in fields(Job))
JOB_DATETIME_FIELDS: tuple[str, ...] = ("created_at", "started_at", "finished_at", "lease_expires_at")


class StoreUnavailable(UserError):
    """The database cannot be reached; queue operations fail with this instead of losing a job."""

    code = "store_unavailable"


# --------------------------------------------------------------------------- records


def _utcnow() -> datetime:
    return to_store_time(datetime.now(UTC))


@dataclass
class UserRecord:
    """Moderation state and usage counters of one member (a default record if never seen)."""

    user_id: str
    banned: bool = False
    ban_reason: str | None = None
    banned_by: str | None = None
    banned_at: datetime | None = None
    max_queued: int | None = None  # None: the server-wide default applies
    daily_gpu_seconds: float | None = None  # None: the server-wide default applies
    jobs_total: int = 0
    gpu_seconds_total: float = 0.0


@dataclass
class GuildSettings:
    """Per-guild policy; a default record if the guild never changed anything."""

    guild_id: str
    allowed_channels: list[str] = field(default_factory=list)  # empty: every channel
    nsfw_policy: NsfwPolicy = "blackout"  # /admin nsfw
    limits: dict[str, Any] = field(default_factory=dict)  # switches: "nsfw_only" (/admin channels nsfw_only)
    blocklist: list[str] = field(default_factory=list)  # regexes or words
    gallery_public: bool = False  # /admin gallery: results shown on the public status page
    paused: bool = False  # /admin pause: new requests from this guild refused

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuildSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


GUILD_FIELDS: frozenset[str] = frozenset(f.name for f in fields(GuildSettings)) - {"guild_id"}


@dataclass
class AuditEntry:
    """One admin action: who did what to whom, why, and when."""

    actor_id: str
    actor_name: str
    action: str  # e.g. "ban", "unban", "quota", "cancel", "purge", "settings"
    target: str | None = None
    reason: str | None = None
    guild_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=_utcnow)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditEntry:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        kw["at"] = as_utc(kw["at"])
        return cls(**kw)


@dataclass(frozen=True)
class Usage:
    """Requests a member made in a window, and the GPU time they used."""

    jobs: int = 0
    gpu_seconds: float = 0.0


@dataclass(frozen=True)
class UserUsage:
    """One member's requests and GPU time in a window (the admin stats' top users)."""

    user_id: str
    jobs: int
    gpu_seconds: float


@dataclass(frozen=True)
class ModelStats:
    model: str
    kind: str
    jobs: int
    complete: int
    failed: int
    cancelled: int
    gpu_seconds_total: float
    gpu_seconds_avg: float  # over jobs that recorded GPU time; 0.0 if none did


# --------------------------------------------------------------------------- helpers shared by drivers


def to_store_time(value: datetime) -> datetime:
    """UTC, truncated to the millisecond: what every driver stores and hands back."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def as_utc(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return to_store_time(value)


_SURROGATE = re.compile("[\ud800-\udfff]")


def scrub_text(value: Any) -> Any:
    """Replace lone surrogates (unencodable in UTF-8 and BSON) by U+FFFD; other values unchanged.

    Returns the same object when nothing needed replacing, so the common case costs one regex
    search per string.
    """
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value) if _SURROGATE.search(value) else value
    if isinstance(value, dict):
        return {scrub_text(k): scrub_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_text(v) for v in value]
    return value


def check_job_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """Validate a partial job update: known fields only, the id fixed, times normalised."""
    unknown = set(changes) - JOB_FIELDS
    if unknown:
        raise ValueError(f"unknown Job field(s): {', '.join(sorted(unknown))}")
    if "id" in changes:
        raise ValueError("a job's id cannot be changed")
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if key in JOB_DATETIME_FIELDS and value is not None:
            value = to_store_time(value)
        elif key == "state":
            value = JobState(value)
        out[key] = value
    return out


def finish_changes(state: JobState | str, changes: dict[str, Any]) -> dict[str, Any]:
    """What a driver's `finish_job` writes: the checked `changes`, the final `state`, the lease
    released, and the time it finished unless the caller gave it."""
    state = JobState(state)
    if not state.is_final:
        raise ValueError(f"finish_job needs a final state, not {state.value!r}")
    out = check_job_changes(changes)
    out.update(state=state, lease_owner=None, lease_expires_at=None)
    out.setdefault("finished_at", datetime.now(UTC))
    return out


def check_collection(collection: str) -> str:
    if collection not in COLLECTIONS:
        raise ValueError(f"unknown collection {collection!r}: one of {', '.join(COLLECTIONS)}")
    return collection


def check_guild_changes(changes: dict[str, Any]) -> dict[str, Any]:
    unknown = set(changes) - GUILD_FIELDS
    if unknown:
        raise ValueError(f"unknown GuildSettings field(s): {', '.join(sorted(unknown))}")
    if "nsfw_policy" in changes and changes["nsfw_policy"] not in NSFW_POLICIES:
        raise ValueError(f"nsfw_policy must be one of {', '.join(NSFW_POLICIES)}")
    out = dict(changes)
    for key in ("allowed_channels", "blocklist"):
        if key in out:
            out[key] = [str(v) for v in out[key]]
    if "limits" in out:
        out["limits"] = dict(out["limits"])
    return out


def remove_files(paths: Iterable[str]) -> None:
    """Delete result files, ignoring ones already gone (blocking: call through asyncio.to_thread)."""
    for p in paths:
        try:
            for part in part_paths(Path(p), Path(p).stem):  # a grid's images alone
                part.unlink(missing_ok=True)
            Path(p).unlink(missing_ok=True)
        except OSError:
            log.warning("could not delete result file %s", p, exc_info=True)


def normalise_job(job: Job) -> Job:
    """The record as it will come back from any driver (times to the ms, text scrubbed)."""
    data = job.to_dict()
    for key in JOB_DATETIME_FIELDS:
        if data[key] is not None:
            data[key] = to_store_time(data[key])
    return Job.from_dict(scrub_text(data))


# --------------------------------------------------------------------------- the interface


class Store(ABC):
    """Abstract storage driver; the module docstring states the rules every driver keeps."""

    #: short driver name for logs, metrics and benchmarks ("sqlite", "mongo", ...)
    name: str = "store"

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abstractmethod
    async def open(self) -> None:
        """Connect, run migrations, create indexes (user+time, state, lease expiry)."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> bool:
        """Reachable? Never raises (used by /readyz and the write buffer)."""

    # --- jobs (queue state); every awaited write is durable before return

    @abstractmethod
    async def insert_job(self, job: Job) -> None: ...

    @abstractmethod
    async def get_job(self, job_id: str) -> Job | None: ...

    @abstractmethod
    async def update_job(self, job_id: str, **changes: Any) -> Job | None:
        """Partial update by field name; returns the new record, None if there is no such job."""

    @abstractmethod
    async def claim_job(
        self, job_id: str, *, owner: str, lease_expires_at: datetime, now: datetime
    ) -> Job | None:
        """Atomic compare-and-set: queued and not cancel_requested -> in_progress.

        Sets attempts += 1, started_at = now (the latest start), the lease owner and expiry.
        None when another claimer won, the job was cancelled, or it does not exist.
        """

    @abstractmethod
    async def renew_lease(self, job_id: str, *, owner: str, lease_expires_at: datetime) -> bool: ...

    @abstractmethod
    async def finish_job(
        self, job_id: str, *, owner: str | None, state: JobState, **changes: Any
    ) -> Job | None:
        """Move a job to a final state if `owner` holds its lease (None: any) and it is not final.

        Clears the lease; sets finished_at to now unless given in `changes`. None if refused.
        """

    @abstractmethod
    async def requeue_job(self, job_id: str, *, owner: str | None) -> Job | None:
        """in_progress -> queued with the lease cleared (attempts kept). None if refused."""

    @abstractmethod
    async def jobs_in_states(self, states: Iterable[JobState], *, limit: int | None = None) -> list[Job]:
        """Oldest first (creation time, then insertion order)."""

    @abstractmethod
    async def expired_leases(self, now: datetime) -> list[Job]:
        """in_progress jobs whose lease expired before `now`."""

    # --- request log queries

    @abstractmethod
    async def user_history(self, user_id: str, *, limit: int = 10, offset: int = 0) -> list[Job]:
        """Newest first."""

    @abstractmethod
    async def guild_recent(self, guild_id: str, *, limit: int = 20) -> list[Job]:
        """Newest first."""

    @abstractmethod
    async def recent_results(self, *, limit: int = 24, guild_ids: Collection[str] | None = None) -> list[Job]:
        """Complete jobs, newest first, optionally only from some guilds."""

    @abstractmethod
    async def recent_trouble(self, *, since: datetime, limit: int = 20) -> list[Job]:
        """Failed and cancelled jobs that finished at or after `since`, the latest to finish first
        (ties: the later inserted first), whichever process finished them."""

    @abstractmethod
    async def user_usage(self, user_id: str, *, since: datetime) -> Usage:
        """Requests created since `since` (any state) and the GPU seconds they used."""

    @abstractmethod
    async def model_stats(self, *, since: datetime | None = None) -> list[ModelStats]:
        """Per (model, kind), sorted by model then kind."""

    @abstractmethod
    async def top_users(
        self, *, since: datetime, limit: int = 10, guild_id: str | None = None
    ) -> list[UserUsage]:
        """Members by GPU seconds used on requests created since `since` (then by request count)."""

    # --- users

    @abstractmethod
    async def get_user(self, user_id: str) -> UserRecord: ...

    @abstractmethod
    async def set_ban(self, user_id: str, *, banned: bool, reason: str | None, by: str) -> UserRecord: ...

    @abstractmethod
    async def set_user_quota(
        self, user_id: str, *, max_queued: int | None, daily_gpu_seconds: float | None
    ) -> UserRecord: ...

    @abstractmethod
    async def add_usage(self, user_id: str, *, jobs: int = 0, gpu_seconds: float = 0.0) -> None: ...

    # --- guild settings

    @abstractmethod
    async def get_guild_settings(self, guild_id: str) -> GuildSettings: ...

    @abstractmethod
    async def update_guild_settings(self, guild_id: str, **changes: Any) -> GuildSettings:
        """Replace the named top-level fields (a `limits` dict replaces the old one whole)."""

    # --- audit

    @abstractmethod
    async def add_audit(self, entry: AuditEntry) -> None: ...

    @abstractmethod
    async def list_audit(
        self,
        *,
        guild_id: str | None = None,
        actor_id: str | None = None,
        target: str | None = None,
        limit: int = 50,
    ) -> list[AuditEntry]:
        """Newest first; filters combine with AND."""

    # --- small key/value (cost model for ETAs, ...)

    @abstractmethod
    async def get_meta(self, key: str) -> Any | None: ...

    @abstractmethod
    async def set_meta(self, key: str, value: Any) -> None:
        """`value` must be JSON-serialisable."""

    # --- saved request defaults (bot.core.defaults): one record per (scope, owner, name)

    @abstractmethod
    async def get_defaults(self, scope: str, owner: str, name: str = "") -> dict[str, Any] | None: ...

    @abstractmethod
    async def set_defaults(self, scope: str, owner: str, values: dict[str, Any], name: str = "") -> None:
        """Replace the record whole (`values` must be JSON-serialisable)."""

    @abstractmethod
    async def delete_defaults(self, scope: str, owner: str, name: str = "") -> bool: ...

    @abstractmethod
    async def list_defaults(self, scope: str, owner: str) -> dict[str, dict[str, Any]]:
        """name -> values of every record of (scope, owner), by name."""

    # --- privacy

    @abstractmethod
    async def delete_user_data(self, user_id: str) -> int:
        """Delete a member's requests (not running ones) and their result files; returns the count.

        Usage counters are reset and saved defaults and presets deleted; ban and quota stay
        (moderation must survive a deletion request), and audit entries stay (they record what
        admins did).
        """

    # --- bulk copy between drivers (`python -m bot.store migrate`)
    #
    # A record travels as a plain dict every driver reads and writes: a job as `Job.to_dict()`, a
    # member as the `UserRecord` fields, an audit entry as `AuditEntry.to_dict()`, a guild's
    # settings as `guild_id` plus every stored key (known to `GuildSettings` or not), meta as
    # `key` and `value`. Times are tz-aware UTC datetimes. The schema version is the store's own
    # bookkeeping: each store records its own at `open()`, so it is not a record.

    @abstractmethod
    async def count_records(self, collection: str) -> int:
        """How many records of `collection` (one of `COLLECTIONS`) the store holds."""

    @abstractmethod
    def export_records(
        self, collection: str, *, batch_size: int = 500
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Every record of `collection`, in batches, jobs and audit entries oldest first (ties in
        insertion order), the others by key."""

    @abstractmethod
    async def import_records(self, collection: str, records: Sequence[dict[str, Any]]) -> None:
        """Write exported records, replacing any with the same key, so a repeated import changes
        nothing. Records are appended in the order given (which orders ties in time). For a
        migration, while nothing else writes to this store."""

    # --- conveniences with a portable default; drivers may override them with a faster query

    async def count_in_states(self, states: Iterable[JobState]) -> dict[JobState, int]:
        counts = {JobState(s): 0 for s in states}
        for job in await self.jobs_in_states(counts):
            counts[job.state] += 1
        return counts

    async def schema_version(self) -> int:
        """The schema version recorded in the database (0 before the first open)."""
        return 0
