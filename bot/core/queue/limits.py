"""Who may queue what: bans, the queue's size, each member's waiting jobs and daily GPU quota.

Checks run in :meth:`JobQueue.submit` for every way in (Discord, REST). Jobs being checked are
reserved first, so two requests racing through the awaits cannot both take the last place.
The member's GPU seconds today are read from the store once, then kept up to date here as
their jobs finish (the queue sees every one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from bot.core.jobs import Job
from bot.core.queue.errors import Banned, QueueFull, QuotaExceeded, TooManyQueued
from bot.core.queue.eta import Estimates
from bot.core.queue.state import QueueState
from generation.phases import JobPhase

log = logging.getLogger(__name__)

#: how long the queue trusts its own running total of a member's GPU seconds today
USAGE_TTL_S = 300.0
USAGE_CACHE_MAX = 10_000


class Limits:
    """The admission rules of the queue, and the kept GPU-second totals they read."""

    def __init__(self, state: QueueState, estimates: Estimates) -> None:
        self.state = state
        self.estimates = estimates
        self._reserved: dict[str, int] = {}
        self._reserved_total = 0
        #: user id -> (day it counts from, GPU seconds used since, when it was read from the store)
        self._usage: dict[str, tuple[datetime, float, float]] = {}

    @contextmanager
    def reserve(self, user_id: str) -> Iterator[None]:
        """Hold a place for a job being checked and stored, until it is queued or refused."""
        self._reserved[user_id] = self._reserved.get(user_id, 0) + 1
        self._reserved_total += 1
        try:
            yield
        finally:
            self._reserved_total -= 1
            left = self._reserved[user_id] - 1
            if left:
                self._reserved[user_id] = left
            else:
                del self._reserved[user_id]

    async def admit(self, job: Job) -> None:
        """Raise the UserError a member can read if `job` may not be queued (inside :meth:`reserve`)."""
        settings = self.state.settings
        user_id = job.user_id
        record = await self.state.store.get_user(user_id)
        if record.banned:
            reason = f": {record.ban_reason}" if record.ban_reason else "."
            raise Banned(f"You are banned from using this bot{reason}")
        waiting = len(self.state.order) + self._reserved_total - 1
        if waiting >= settings.max_queue:
            raise QueueFull(
                f"The queue is full ({settings.max_queue} jobs waiting); please try again in a few minutes."
            )
        cap = record.max_queued if record.max_queued is not None else settings.max_queued_per_user
        mine = self.state.order.count_for_user(user_id) + self._reserved[user_id] - 1
        if mine + job.units > cap:
            needs = f"; this request makes {job.units} images, each counts" if job.units > 1 else ""
            raise TooManyQueued(
                f"You already have {mine} job{'s' if mine != 1 else ''} waiting (the limit is {cap}{needs}); "
                "wait for one to finish or cancel one with /queue cancel."
            )
        await self._check_quota(job, record.daily_gpu_seconds)

    async def _check_quota(self, job: Job, override: float | None) -> None:
        limit = override if override is not None else self.state.settings.daily_gpu_seconds_per_user
        if limit is None or limit <= 0:
            return  # no quota
        now = self.state.clock()
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        used = await self._used_today(job.user_id, day)
        pending = self._pending_work(job.user_id)
        if used + pending >= limit:
            reset = day + timedelta(days=1) - now
            hours, minutes = divmod(int(reset.total_seconds()) // 60, 60)
            waiting = (
                f" (including about {pending / 60:.0f} min for jobs still waiting)" if pending >= 30 else ""
            )
            raise QuotaExceeded(
                f"You have used your {limit / 60:.0f} GPU minutes for today{waiting}. "
                f"The quota resets at 00:00 UTC, in {hours} h {minutes} min."
            )

    def _pending_work(self, user_id: str) -> float:
        """Estimated GPU seconds of the member's jobs that are queued or still on a GPU."""
        pending = sum(self.estimates.estimate(j) for j in self.state.order.jobs_for_user(user_id))
        return pending + sum(
            f.cost
            for f in self.state.in_flight.values()
            if f.job.user_id == user_id and f.phase != JobPhase.FINISHING
        )

    async def _used_today(self, user_id: str, day: datetime) -> float:
        """GPU seconds of the member's requests made since `day`, re-read after USAGE_TTL_S in case
        an admin changed something behind the queue's back."""
        cached = self._usage.get(user_id)
        now = time.monotonic()
        if cached is not None and cached[0] == day and now - cached[2] < USAGE_TTL_S:
            return cached[1]
        usage = await self.state.store.user_usage(user_id, since=day)
        self._usage[user_id] = (day, usage.gpu_seconds, now)
        if len(self._usage) > USAGE_CACHE_MAX:
            oldest = sorted(self._usage, key=lambda u: self._usage[u][2])[: len(self._usage) // 2]
            for user in oldest:
                del self._usage[user]
        return usage.gpu_seconds

    def forget_usage(self, user_id: str | None = None) -> None:
        """Drop the kept GPU-second totals (of one member, or all), so the next check asks the store."""
        if user_id is None:
            self._usage.clear()
        else:
            self._usage.pop(user_id, None)

    def count_usage(self, job: Job, gpu_seconds: float) -> None:
        """Add a finished job's GPU seconds to its member's kept total."""
        cached = self._usage.get(job.user_id)
        if cached is not None and job.created_at >= cached[0]:
            self._usage[job.user_id] = (cached[0], cached[1] + gpu_seconds, cached[2])
