"""A store wrapper that keeps request-log writes in memory while the database is unreachable.

Why: a Mongo failover or a locked SQLite file should not lose the record of a job that already
ran, nor stall delivery. Request-log writes (`update_job`, `finish_job`, `add_usage`,
`add_audit`, `set_meta`) that fail with `StoreUnavailable` are queued in memory, in order,
bounded by `max_items` (the oldest are kept, overflow is counted in `dropped`), and a background
task applies them as soon as `ping()` succeeds again. While anything is buffered, later log writes
queue behind it, so the database sees them in the order they were made.

Queue operations (`insert_job`, `claim_job`, `requeue_job`) are never buffered: a job the caller
believes queued must be in the database, so they fail with a `StoreUnavailable` that says what did
not happen. They first flush the buffer, so they never overtake an earlier write. Everything else
(reads, bans, quotas, guild settings, lease renewals, data deletion) passes straight through.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bot.core.jobs import Job, JobState
from bot.core.store.base import (
    AuditEntry,
    GuildSettings,
    ModelStats,
    Store,
    StoreUnavailable,
    Usage,
    UserRecord,
    UserUsage,
    check_job_changes,
)

log = logging.getLogger(__name__)

_KNOWN_JOBS_MAX = 2048  # recent job records kept to answer buffered updates with a best-effort record


@dataclass
class _Pending:
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


class BufferedStore(Store):
    """Wraps any `Store`; see the module docstring. `buffer_size` and `dropped` feed /metrics."""

    def __init__(self, inner: Store, *, max_items: int, flush_interval_s: float = 1.0) -> None:
        if max_items < 0:
            raise ValueError("max_items must be >= 0")
        self.inner = inner
        self.name = inner.name
        self.max_items = max_items
        self.flush_interval_s = flush_interval_s
        self.dropped = 0  # writes lost because the buffer was full
        self.failed = 0  # buffered writes the database refused for another reason when replayed
        self.flushed = 0  # buffered writes applied after recovery
        self._buffer: deque[_Pending] = deque()
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._known: OrderedDict[str, Job] = OrderedDict()

    @property
    def buffer_size(self) -> int:
        return len(self._buffer)

    # ----------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        await self.inner.open()
        if self._task is None:
            self._task = asyncio.create_task(self._flush_loop(), name="store-buffer-flush")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._buffer:
            with contextlib.suppress(StoreUnavailable):
                await self.flush()
        if self._buffer:
            log.error(
                "store closing with %d request-log writes unwritten (database unreachable): they are lost",
                len(self._buffer),
            )
        await self.inner.close()

    async def ping(self) -> bool:
        return await self.inner.ping()

    async def schema_version(self) -> int:
        return await self.inner.schema_version()

    # bulk copy: straight through (a migration runs with the bot stopped, nothing to buffer)

    async def count_records(self, collection: str) -> int:
        return await self.inner.count_records(collection)

    def export_records(
        self, collection: str, *, batch_size: int = 500
    ) -> AsyncIterator[list[dict[str, Any]]]:
        return self.inner.export_records(collection, batch_size=batch_size)

    async def import_records(self, collection: str, records: Sequence[dict[str, Any]]) -> None:
        await self.inner.import_records(collection, records)

    # ----------------------------------------------------------------- buffering

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            if not self._buffer:
                continue
            try:
                if await self.inner.ping():
                    await self.flush()
            except StoreUnavailable:
                pass  # still down; try again next round
            except Exception:  # never let the flusher die: it is the only way the buffer drains
                log.exception("store buffer flush failed")

    async def flush(self) -> bool:
        """Apply buffered writes in order; True when the buffer is empty afterwards.

        Raises StoreUnavailable (after keeping what is left) if the database fails again midway.
        """
        async with self._flush_lock:
            while self._buffer:
                item = self._buffer[0]
                try:
                    result = await getattr(self.inner, item.method)(*item.args, **item.kwargs)
                except StoreUnavailable:
                    raise
                except Exception:
                    self.failed += 1
                    log.exception("buffered %s refused by the database; dropped", item.method)
                else:
                    self.flushed += 1
                    if isinstance(result, Job):
                        self._remember(result)
                self._buffer.popleft()
            if self.flushed:
                log.debug("store buffer drained (%d writes applied so far)", self.flushed)
            return True

    def _enqueue(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if len(self._buffer) >= self.max_items:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error(
                    "store write buffer full (%d): dropped %s (%d dropped so far)",
                    self.max_items,
                    method,
                    self.dropped,
                )
            return
        if not self._buffer:
            log.warning("store unreachable: buffering request-log writes (up to %d)", self.max_items)
        self._buffer.append(_Pending(method, args, kwargs))

    async def _log_write(self, method: str, *args: Any, **kwargs: Any) -> tuple[bool, Any]:
        """(written now?, result). Queues the write behind earlier ones or when the store is down."""
        if not self._buffer:
            try:
                return True, await getattr(self.inner, method)(*args, **kwargs)
            except StoreUnavailable as exc:
                log.warning("store write %s failed (%s): buffering it", method, exc.__cause__ or exc)
        self._enqueue(method, args, kwargs)
        return False, None

    async def _queue_op(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            if self._buffer:
                await self.flush()  # never overtake an earlier write
            return await getattr(self.inner, method)(*args, **kwargs)
        except StoreUnavailable as exc:
            raise StoreUnavailable(
                f"The request database is unreachable, so {what}. Please try again in a minute."
            ) from exc

    def _remember(self, job: Job | None) -> Job | None:
        if job is not None:
            self._known[job.id] = job
            self._known.move_to_end(job.id)
            while len(self._known) > _KNOWN_JOBS_MAX:
                self._known.popitem(last=False)
        return job

    def _assumed(self, job_id: str, changes: dict[str, Any]) -> Job | None:
        """The record as it will be once the buffered write lands, if we saw the job before."""
        known = self._known.get(job_id)
        if known is None:
            return None
        return self._remember(dataclasses.replace(known, **changes))

    # ----------------------------------------------------------------- queue operations (never buffered)

    async def insert_job(self, job: Job) -> None:
        await self._queue_op("the request was not queued", "insert_job", job)
        self._remember(job)

    async def claim_job(
        self, job_id: str, *, owner: str, lease_expires_at: datetime, now: datetime
    ) -> Job | None:
        return self._remember(
            await self._queue_op(
                f"job {job_id} was not started (it stays queued)",
                "claim_job",
                job_id,
                owner=owner,
                lease_expires_at=lease_expires_at,
                now=now,
            )
        )

    async def requeue_job(self, job_id: str, *, owner: str | None) -> Job | None:
        return self._remember(
            await self._queue_op(
                f"job {job_id} was not put back in the queue", "requeue_job", job_id, owner=owner
            )
        )

    # ----------------------------------------------------------------- request-log writes (buffered)

    async def update_job(self, job_id: str, **changes: Any) -> Job | None:
        changes = check_job_changes(changes)
        done, result = await self._log_write("update_job", job_id, **changes)
        return self._remember(result) if done else self._assumed(job_id, changes)

    async def finish_job(
        self, job_id: str, *, owner: str | None, state: JobState, **changes: Any
    ) -> Job | None:
        if not JobState(state).is_final:
            raise ValueError(f"finish_job needs a final state, not {JobState(state).value!r}")
        changes = check_job_changes(changes)
        changes.setdefault("finished_at", datetime.now(UTC))  # the time it finished, not when replayed
        done, result = await self._log_write("finish_job", job_id, owner=owner, state=state, **changes)
        if done:
            return self._remember(result)
        return self._assumed(
            job_id, {**changes, "state": JobState(state), "lease_owner": None, "lease_expires_at": None}
        )

    async def add_usage(self, user_id: str, *, jobs: int = 0, gpu_seconds: float = 0.0) -> None:
        await self._log_write("add_usage", user_id, jobs=jobs, gpu_seconds=gpu_seconds)

    async def add_audit(self, entry: AuditEntry) -> None:
        await self._log_write("add_audit", entry)

    async def set_meta(self, key: str, value: Any) -> None:
        await self._log_write("set_meta", key, value)

    # ----------------------------------------------------------------- pass-through

    async def get_job(self, job_id: str) -> Job | None:
        return self._remember(await self.inner.get_job(job_id))

    async def renew_lease(self, job_id: str, *, owner: str, lease_expires_at: datetime) -> bool:
        return await self.inner.renew_lease(job_id, owner=owner, lease_expires_at=lease_expires_at)

    async def jobs_in_states(self, states: Iterable[JobState], *, limit: int | None = None) -> list[Job]:
        return await self.inner.jobs_in_states(states, limit=limit)

    async def count_in_states(self, states: Iterable[JobState]) -> dict[JobState, int]:
        return await self.inner.count_in_states(states)

    async def expired_leases(self, now: datetime) -> list[Job]:
        return await self.inner.expired_leases(now)

    async def user_history(self, user_id: str, *, limit: int = 10, offset: int = 0) -> list[Job]:
        return await self.inner.user_history(user_id, limit=limit, offset=offset)

    async def guild_recent(self, guild_id: str, *, limit: int = 20) -> list[Job]:
        return await self.inner.guild_recent(guild_id, limit=limit)

    async def recent_results(self, *, limit: int = 24, guild_ids: Collection[str] | None = None) -> list[Job]:
        return await self.inner.recent_results(limit=limit, guild_ids=guild_ids)

    async def recent_trouble(self, *, since: datetime, limit: int = 20) -> list[Job]:
        return await self.inner.recent_trouble(since=since, limit=limit)

    async def user_usage(self, user_id: str, *, since: datetime) -> Usage:
        return await self.inner.user_usage(user_id, since=since)

    async def model_stats(self, *, since: datetime | None = None) -> list[ModelStats]:
        return await self.inner.model_stats(since=since)

    async def top_users(
        self, *, since: datetime, limit: int = 10, guild_id: str | None = None
    ) -> list[UserUsage]:
        return await self.inner.top_users(since=since, limit=limit, guild_id=guild_id)

    async def get_user(self, user_id: str) -> UserRecord:
        return await self.inner.get_user(user_id)

    async def set_ban(self, user_id: str, *, banned: bool, reason: str | None, by: str) -> UserRecord:
        return await self.inner.set_ban(user_id, banned=banned, reason=reason, by=by)

    async def set_user_quota(
        self, user_id: str, *, max_queued: int | None, daily_gpu_seconds: float | None
    ) -> UserRecord:
        return await self.inner.set_user_quota(
            user_id, max_queued=max_queued, daily_gpu_seconds=daily_gpu_seconds
        )

    async def get_guild_settings(self, guild_id: str) -> GuildSettings:
        return await self.inner.get_guild_settings(guild_id)

    async def update_guild_settings(self, guild_id: str, **changes: Any) -> GuildSettings:
        return await self.inner.update_guild_settings(guild_id, **changes)

    async def list_audit(
        self,
        *,
        guild_id: str | None = None,
        actor_id: str | None = None,
        target: str | None = None,
        limit: int = 50,
    ) -> list[AuditEntry]:
        return await self.inner.list_audit(guild_id=guild_id, actor_id=actor_id, target=target, limit=limit)

    async def get_meta(self, key: str) -> Any | None:
        return await self.inner.get_meta(key)

    async def get_defaults(self, scope: str, owner: str, name: str = "") -> dict[str, Any] | None:
        return await self.inner.get_defaults(scope, owner, name)

    async def set_defaults(self, scope: str, owner: str, values: dict[str, Any], name: str = "") -> None:
        await self.inner.set_defaults(scope, owner, values, name)  # a member waits for the answer

    async def delete_defaults(self, scope: str, owner: str, name: str = "") -> bool:
        return await self.inner.delete_defaults(scope, owner, name)

    async def list_defaults(self, scope: str, owner: str) -> dict[str, dict[str, Any]]:
        return await self.inner.list_defaults(scope, owner)

    async def delete_user_data(self, user_id: str) -> int:
        if self._buffer:
            with contextlib.suppress(StoreUnavailable):
                await self.flush()  # a buffered write must not re-create what is being deleted
        self._known = OrderedDict((k, j) for k, j in self._known.items() if j.user_id != user_id)
        return await self.inner.delete_user_data(user_id)
