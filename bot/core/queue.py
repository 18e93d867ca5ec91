"""The job queue: what the bot, the REST API and the admin commands call.

:class:`JobQueue` keeps the fair order (:mod:`bot.core.scheduler`) in memory and every state change
in the store, hands the next fair job to an executor (:mod:`bot.core.executor`) whenever it has room,
and tells listeners what happens (:class:`JobListener`). The store is the queue's memory, so a
restart resumes exactly where the last process stopped:

- a job is persisted before :meth:`JobQueue.submit` returns, so a member never sees "queued"
  for a job a crash could lose;
- a running job holds a lease (owner + expiry) renewed while it runs; at start-up, and by a
  periodic sweep, a job whose lease expired or whose owner process is gone goes back to the
  front of the queue with its attempt counted, or fails with a message after ``MAX_TRIES``;
- a complete job is offered to listeners until one records its delivery
  (:meth:`JobQueue.mark_delivered`); after a restart, complete-but-undelivered jobs are offered
  once more, and delivered ones never are, so a result is not posted twice.

All methods run on the event loop and never block it: store calls are awaited, encoding and
generation live on the executor's threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from bot.core.costs import CostModel
from bot.core.executor import Executor, Outcome, PreviewFn, WorkerInfo
from bot.core.jobs import Job, JobState, Source, utcnow
from bot.core.results import JobResult, ResultWriter
from bot.core.scheduler import FairOrder
from bot.core.store.base import Store, StoreUnavailable, to_store_time
from bot.settings import Settings
from generation.errors import UserError
from generation.phases import JobPhase

log = logging.getLogger(__name__)

__all__ = [
    "AlreadyFinished",
    "Banned",
    "BaseJobListener",
    "JobListener",
    "JobNotFound",
    "JobQueue",
    "JobResult",
    "NotAllowed",
    "QueueEntry",
    "QueueFull",
    "QueuePaused",
    "QueueSnapshot",
    "QuotaExceeded",
    "RunningEntry",
    "Submitted",
    "TooManyQueued",
]

PAUSED_KEY = "queue_paused"
#: complete jobs older than this are not offered for delivery again after a restart
REDELIVER_WINDOW = timedelta(hours=24)
#: how many recent complete jobs a restart looks through for undelivered ones
REDELIVER_SCAN = 200
#: above this many queued jobs, cached costs are refreshed at most every COST_REFRESH_S
COST_REFRESH_EAGER_MAX = 2000
COST_REFRESH_S = 10.0
#: how long the queue trusts its own running total of a member's GPU seconds today
USAGE_TTL_S = 300.0
USAGE_CACHE_MAX = 10_000


# --------------------------------------------------------------------------- errors members see


class QueueFull(UserError):
    code = "queue_full"


class TooManyQueued(UserError):
    code = "too_many_queued"


class QuotaExceeded(UserError):
    code = "quota_exceeded"


class Banned(UserError):
    code = "banned"


class QueuePaused(UserError):
    code = "queue_paused"


class JobNotFound(UserError):
    code = "not_found"


class NotAllowed(UserError):
    code = "forbidden"


class AlreadyFinished(UserError):
    code = "already_finished"


# --------------------------------------------------------------------------- what callers get back


@dataclass(frozen=True)
class Submitted:
    """A job accepted and persisted: its place in line and the estimated wait before it starts."""

    job: Job
    position: int
    eta_s: float
    #: estimated GPU seconds of the job itself (so "starts in ~eta_s, takes ~run_s")
    run_s: float = 0.0


@dataclass(frozen=True)
class QueueEntry:
    job: Job
    position: int
    eta_s: float  # seconds until it starts
    run_s: float  # its own estimated GPU seconds


@dataclass(frozen=True)
class RunningEntry:
    job: Job
    step: int
    total: int
    elapsed_s: float
    remaining_s: float
    worker_id: str | None
    #: STARTING (claimed, handed to a worker, waiting for its device), RUNNING, or
    #: FINISHING (the GPU is done; encoding and delivery remain)
    phase: JobPhase = JobPhase.RUNNING


@dataclass(frozen=True)
class QueueSnapshot:
    """The queue at one moment, for /queue, /info, the REST API and metrics."""

    #: the job on the GPU (the longest-running one when there are several workers)
    running: Job | None
    progress: RunningEntry | None
    active: list[RunningEntry]
    queued: list[QueueEntry]
    paused: bool
    counts: dict[str, int]
    workers: list[WorkerInfo] = field(default_factory=list)


# --------------------------------------------------------------------------- listeners


@runtime_checkable
class JobListener(Protocol):
    """Reacts to jobs moving through the queue (Discord delivery, web server, metrics).

    Events of one job reach a listener in order (queued, started, progress…, finished) and one
    at a time; progress is throttled to ``PROGRESS_EDIT_INTERVAL_S`` per job, and a progress
    event still waiting when a newer one arrives is replaced by it. `on_finished` gets the final
    record (state complete, failed or cancelled; `error` safe to show) and, when complete, the
    result file. A listener that delivers calls :meth:`JobQueue.mark_delivered` afterwards.
    """

    async def on_queued(self, job: Job) -> None: ...

    async def on_started(self, job: Job) -> None: ...

    async def on_progress(self, job: Job, step: int, total: int, preview_png: bytes | None) -> None: ...

    async def on_finished(self, job: Job, result: JobResult | None) -> None: ...


class BaseJobListener:
    """No-op listener to subclass: override only what you need."""

    async def on_queued(self, job: Job) -> None:
        return None

    async def on_started(self, job: Job) -> None:
        return None

    async def on_progress(self, job: Job, step: int, total: int, preview_png: bytes | None) -> None:
        return None

    async def on_finished(self, job: Job, result: JobResult | None) -> None:
        return None


@dataclass
class _Event:
    kind: str  # queued | started | progress | finished
    job: Job
    step: int = 0
    total: int = 0
    preview: PreviewFn | None = None
    result: JobResult | None = None


class _ListenerBus:
    """Per-job, in-order, one-at-a-time delivery of events to every listener."""

    def __init__(self, listeners: list[JobListener]) -> None:
        self._listeners = listeners
        self._chans: dict[str, deque[_Event]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def emit(self, event: _Event) -> None:
        if not self._listeners:
            return
        job_id = event.job.id
        chan = self._chans.setdefault(job_id, deque())
        if event.kind == "progress" and chan and chan[-1].kind == "progress":
            chan[-1] = event  # coalesce: only the newest progress is worth showing
        else:
            chan.append(event)
        if job_id not in self._tasks:
            self._tasks[job_id] = asyncio.create_task(self._pump(job_id), name=f"listeners-{job_id[:8]}")

    async def _pump(self, job_id: str) -> None:
        chan = self._chans[job_id]
        try:
            while chan:
                event = chan.popleft()
                await self._deliver(event)
        finally:
            self._tasks.pop(job_id, None)
            if not chan:
                self._chans.pop(job_id, None)
            else:  # cancelled mid-way: keep the rest for drain() to report
                log.debug("listener events for %s left undelivered", job_id)

    async def _deliver(self, event: _Event) -> None:
        preview_png: bytes | None = None
        if event.kind == "progress" and event.preview is not None:
            try:
                preview_png = await asyncio.to_thread(event.preview)
            except Exception:
                log.warning("job %s: preview could not be encoded", event.job.id, exc_info=True)
        for listener in list(self._listeners):
            try:
                if event.kind == "queued":
                    await listener.on_queued(event.job)
                elif event.kind == "started":
                    await listener.on_started(event.job)
                elif event.kind == "progress":
                    await listener.on_progress(event.job, event.step, event.total, preview_png)
                else:
                    await listener.on_finished(event.job, event.result)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "listener %s failed on %s of job %s", type(listener).__name__, event.kind, event.job.id
                )

    async def drain(self, timeout_s: float) -> None:
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)


# --------------------------------------------------------------------------- the queue


@dataclass
class _Active:
    """A job handed to (or being handed to) the executor."""

    job: Job
    cost: float
    phase: JobPhase = JobPhase.CLAIMING  # CLAIMING | RUNNING | FINISHING
    started_mono: float | None = None
    step: int = 0
    total: int = 0
    worker_id: str | None = None
    cancel: bool = False
    last_progress: float = -1e9
    preview: PreviewFn | None = None


class JobQueue:
    """Fair, persistent job queue in front of one executor; see the module docstring.

    `clock` gives the wall time (tz-aware UTC) for records and quotas; tests pass a fake one.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        executor: Executor,
        clock: Callable[[], datetime] = utcnow,
        cost_model: CostModel | None = None,
        results: ResultWriter | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.executor = executor
        self.clock = clock
        self.costs = cost_model or CostModel()
        self.results = results or ResultWriter(results_dir=settings.results_dir)
        self.owner_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.order = FairOrder(cost=self._estimate)
        self._active: dict[str, _Active] = {}
        self._listeners: list[JobListener] = []
        self._bus = _ListenerBus(self._listeners)
        self._paused = False
        self._started = False
        self._stopping = False
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._reserved: dict[str, int] = {}
        self._reserved_total = 0
        #: job id -> when it was offered for delivery (oldest first); only the last
        #: REDELIVER_WINDOW matters, since redeliver_pending skips anything finished before that
        self._offered: dict[str, datetime] = {}
        self._cost_version = self.costs.version
        self._cost_refreshed = 0.0
        self._costs_dirty = False
        #: user id -> (day it counts from, GPU seconds used since, when it was read from the store)
        self._usage: dict[str, tuple[datetime, float, float]] = {}

    # -- wiring ------------------------------------------------------------------------------

    def add_listener(self, listener: JobListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: JobListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def started(self) -> bool:
        return self._started and not self._stopping

    def workers(self) -> list[WorkerInfo]:
        return self.executor.workers()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the queue from the store, recover orphans, start the executor and the loops."""
        if self._started:
            raise RuntimeError("JobQueue already started")
        try:
            await self.costs.load(self.store)
        except Exception:
            log.exception("could not load the ETA cost model; starting from the priors")
        self._cost_version = self.costs.version
        paused = await self.store.get_meta(PAUSED_KEY)
        self._paused = bool(paused.get("paused")) if isinstance(paused, dict) else bool(paused)
        now = self.clock()
        recovered = 0
        for job in await self.store.jobs_in_states([JobState.IN_PROGRESS]):
            if self._orphaned(job, now):
                await self._recover(job, why="its worker stopped")
                recovered += 1
            else:
                log.info("job %s is running under %s; leaving it to its lease", job.id, job.lease_owner)
        for job in await self.store.jobs_in_states([JobState.QUEUED]):
            await self._enqueue_loaded(job)
        self._started = True
        await self.executor.start(self)
        self._loops = [
            asyncio.create_task(self._dispatch_loop(), name="queue-dispatch"),
            asyncio.create_task(self._maintenance_loop(), name="queue-maintenance"),
        ]
        log.info(
            "queue started as %s: %d queued, %d recovered from a previous run%s",
            self.owner_id,
            len(self.order),
            recovered,
            " (paused)" if self._paused else "",
        )
        self._wake.set()
        await self.redeliver_pending()

    async def stop(self, *, graceful: bool = True, timeout_s: float = 30.0) -> None:
        """Stop dispatching; let the running job finish (graceful, up to `timeout_s`) or stop it
        at its next step. Interrupted jobs go back to the queue without losing a try."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        lost = await self.executor.stop(graceful=graceful, timeout_s=timeout_s)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=max(5.0, timeout_s))
        for job_id in set(lost) | set(self._active):
            active = self._active.pop(job_id, None)
            await self._interrupted(job_id, active.job if active else None)
        await self._bus.drain(timeout_s=5.0)
        if self._costs_dirty:
            with contextlib.suppress(Exception):
                await self.costs.save(self.store)
        log.info("queue stopped (%d jobs left queued)", len(self.order))

    # -- submitting --------------------------------------------------------------------------

    async def submit(self, job: Job) -> Submitted:
        """Check limits, persist, and queue `job`; raises a UserError a member can read."""
        if not self.started:
            raise QueuePaused("The bot is starting or restarting; try again in a minute.")
        if self._paused:
            raise QueuePaused("The queue is paused by the admins right now; please try again later.")
        user_id = job.user_id
        self._reserved[user_id] = self._reserved.get(user_id, 0) + 1
        self._reserved_total += 1
        try:
            record = await self.store.get_user(user_id)
            if record.banned:
                reason = f": {record.ban_reason}" if record.ban_reason else "."
                raise Banned(f"You are banned from using this bot{reason}")
            waiting = len(self.order) + self._reserved_total - 1
            if waiting >= self.settings.max_queue:
                raise QueueFull(
                    f"The queue is full ({self.settings.max_queue} jobs waiting); "
                    "please try again in a few minutes."
                )
            cap = record.max_queued if record.max_queued is not None else self.settings.max_queued_per_user
            mine = self.order.count_for_user(user_id) + self._reserved[user_id] - 1
            if mine >= cap:
                raise TooManyQueued(
                    f"You already have {mine} job{'s' if mine != 1 else ''} waiting (the limit is {cap}); "
                    "wait for one to finish or cancel one with /queue cancel."
                )
            await self._check_quota(job, record.daily_gpu_seconds)
            job.state = JobState.QUEUED
            job.created_at = to_store_time(self.clock())
            job.attempts = 0
            job.max_tries = self.settings.max_tries
            job.lease_owner = job.lease_expires_at = None
            job.started_at = job.finished_at = None
            job.cancel_requested = False
            job.params = {"kind": job.kind, "model": job.model, **job.params}
            await self.store.insert_job(job)
            self.order.add(job)
        finally:
            self._reserved_total -= 1
            left = self._reserved[user_id] - 1
            if left:
                self._reserved[user_id] = left
            else:
                del self._reserved[user_id]
        self._wake.set()
        self._bus.emit(_Event("queued", job))
        position = self.order.position(job.id) or 1
        log.info(
            "job %s queued for %s (%s %s) at position %d", job.id, user_id, job.kind, job.model, position
        )
        return Submitted(
            job=job,
            position=position,
            eta_s=self._queued_eta(job.id) or 0.0,
            run_s=self.order.cost_of(job.id) or 0.0,
        )

    async def _check_quota(self, job: Job, override: float | None) -> None:
        limit = override if override is not None else self.settings.daily_gpu_seconds_per_user
        if limit is None or limit <= 0:
            return  # no quota
        now = self.clock()
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        used = await self._used_today(job.user_id, day)
        pending = sum(self._estimate(j) for j in self.order.jobs_for_user(job.user_id))
        pending += sum(
            a.cost
            for a in self._active.values()
            if a.job.user_id == job.user_id and a.phase != JobPhase.FINISHING
        )
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

    async def _used_today(self, user_id: str, day: datetime) -> float:
        """GPU seconds of the member's requests made since `day`: asked of the store once, then kept
        up to date here as jobs finish (the queue sees every one), re-read after USAGE_TTL_S in case
        an admin changed something behind our back."""
        cached = self._usage.get(user_id)
        now = time.monotonic()
        if cached is not None and cached[0] == day and now - cached[2] < USAGE_TTL_S:
            return cached[1]
        usage = await self.store.user_usage(user_id, since=day)
        self._usage[user_id] = (day, usage.gpu_seconds, now)
        if len(self._usage) > USAGE_CACHE_MAX:
            oldest = sorted(self._usage, key=lambda u: self._usage[u][2])[: len(self._usage) // 2]
            for user in oldest:
                del self._usage[user]
        return usage.gpu_seconds

    def forget_usage(self, user_id: str | None = None) -> None:
        """Drop the kept GPU-second totals (of one member, or all): call after deleting a member's
        data or editing usage outside the queue, so the next quota check asks the store."""
        if user_id is None:
            self._usage.clear()
        else:
            self._usage.pop(user_id, None)

    def _count_usage(self, job: Job, gpu_seconds: float) -> None:
        cached = self._usage.get(job.user_id)
        if cached is not None and job.created_at >= cached[0]:
            self._usage[job.user_id] = (cached[0], cached[1] + gpu_seconds, cached[2])

    # -- cancel, pause, delivery -------------------------------------------------------------

    async def cancel(self, job_id: str, *, by_user_id: str, is_admin: bool = False) -> Job:
        """Cancel a queued job at once, or a running one at its next step (its owner or an admin)."""
        job = self.order.get(job_id)
        active = self._active.get(job_id)
        if job is None and active is not None:
            job = active.job
        if job is None:
            job = await self.store.get_job(job_id)
        if job is None:
            raise JobNotFound("There is no job with that id.")
        if job.user_id != by_user_id and not is_admin:
            raise NotAllowed("You can only cancel your own jobs.")
        who = "an admin" if job.user_id != by_user_id else "you"
        if job_id in self.order:
            self.order.remove(job_id)
            done = await self.store.finish_job(
                job_id,
                owner=None,
                state=JobState.CANCELLED,
                cancel_requested=True,
                error=f"Cancelled by {who} before it started.",
            )
            if done is None:
                done = await self.store.get_job(job_id) or job
            else:
                self._bus.emit(_Event("finished", done))
            log.info("job %s cancelled while queued by %s", job_id, by_user_id)
            return done
        if active is not None:
            if active.phase == JobPhase.FINISHING:
                raise AlreadyFinished("That job has already finished generating; its result is on its way.")
            active.cancel = True
            active.job.cancel_requested = True
            updated = await self.store.update_job(job_id, cancel_requested=True)
            if active.phase != JobPhase.CLAIMING:
                await self.executor.cancel(job_id)
            log.info("job %s: cancel requested by %s while running", job_id, by_user_id)
            return updated or active.job
        if job.state.is_final:
            raise AlreadyFinished(f"That job has already {_past(job.state)}.")
        # queued or running under another scheduler: ask through the store
        if job.state is JobState.QUEUED:
            done = await self.store.finish_job(
                job_id,
                owner=None,
                state=JobState.CANCELLED,
                cancel_requested=True,
                error=f"Cancelled by {who}.",
            )
            if done is not None:
                return done
        return await self.store.update_job(job_id, cancel_requested=True) or job

    async def pause(self, by: str) -> None:
        """Stop starting jobs (the running one finishes) and refuse new ones until resumed."""
        self._paused = True
        await self.store.set_meta(PAUSED_KEY, {"paused": True, "by": by, "at": self.clock().isoformat()})
        log.info("queue paused by %s", by)

    async def resume(self, by: str) -> None:
        self._paused = False
        await self.store.set_meta(PAUSED_KEY, {"paused": False, "by": by, "at": self.clock().isoformat()})
        log.info("queue resumed by %s", by)
        self._wake.set()

    async def mark_delivered(
        self, job_id: str, message_id: str | None = None, *, url: str | None = None
    ) -> Job | None:
        """Record where a result was posted, so it is never offered again (even after a restart)."""
        changes: dict[str, Any] = {}
        if message_id is not None:
            changes["result_message_id"] = str(message_id)
        if url is not None:
            changes["result_url"] = url
        if not changes:
            raise ValueError("mark_delivered needs a message_id or a url")
        self._mark_offered(job_id)
        return await self.store.update_job(job_id, **changes)

    async def redeliver_pending(self) -> int:
        """Offer complete Discord jobs whose result was never recorded as posted; returns how many."""
        cutoff = self.clock() - REDELIVER_WINDOW
        try:
            recent = await self.store.recent_results(limit=REDELIVER_SCAN)
        except StoreUnavailable:
            log.warning("store unavailable: undelivered results will be offered at the next start")
            return 0
        offered = 0
        for job in reversed(recent):  # oldest first
            if (
                job.source is not Source.DISCORD
                or job.result_message_id is not None
                or job.id in self._offered
                or job.finished_at is None
                or job.finished_at < cutoff
            ):
                continue
            result = await asyncio.to_thread(self.results.result_for, job)
            if result is None:
                continue
            self._mark_offered(job.id)
            log.info("job %s finished before a restart but was not delivered: offering it again", job.id)
            self._bus.emit(_Event("finished", job, result=result))
            offered += 1
        return offered

    def _mark_offered(self, job_id: str) -> None:
        """Remember that `job_id` was offered. Offers older than REDELIVER_WINDOW are forgotten, so
        this stays bounded: their jobs finished before redeliver_pending's cutoff, which it skips."""
        now = self.clock()
        self._offered.pop(job_id, None)
        self._offered[job_id] = now
        cutoff = now - REDELIVER_WINDOW
        while True:
            oldest = next(iter(self._offered))
            if self._offered[oldest] >= cutoff:
                return
            del self._offered[oldest]

    # -- reading -----------------------------------------------------------------------------

    def position(self, job_id: str) -> int | None:
        """0 while running, 1 for the next job to start, …; None when not queued or running."""
        if job_id in self._active:
            return 0
        return self.order.position(job_id)

    def eta_s(self, job_id: str) -> float | None:
        """Seconds until the job starts (0 when running); None when not queued or running."""
        if job_id in self._active:
            return 0.0
        return self._queued_eta(job_id)

    def remaining_s(self, job_id: str) -> float | None:
        """Estimated seconds until a running job's GPU work is done."""
        active = self._active.get(job_id)
        return None if active is None else self._remaining(active, time.monotonic())

    def get(self, job_id: str) -> Job | None:
        """The live record of a queued or running job (None otherwise: ask the store)."""
        active = self._active.get(job_id)
        return active.job if active is not None else self.order.get(job_id)

    def snapshot(self, *, limit: int | None = None) -> QueueSnapshot:
        """Running jobs with progress, then queued jobs in fair order with positions and ETAs."""
        self._refresh_costs()
        now = time.monotonic()
        active: list[RunningEntry] = []
        for a in self._active.values():
            if a.phase == JobPhase.FINISHING:
                phase = JobPhase.FINISHING
            elif a.started_mono is None:
                phase = JobPhase.STARTING  # claimed and handed over, waiting for the device
            else:
                phase = JobPhase.RUNNING
            active.append(
                RunningEntry(
                    job=a.job,
                    step=a.step,
                    total=a.total,
                    elapsed_s=now - a.started_mono if a.started_mono is not None else 0.0,
                    remaining_s=self._remaining(a, now),
                    worker_id=a.worker_id,
                    phase=phase,
                )
            )
        running = sorted((e for e in active if e.phase == JobPhase.RUNNING), key=lambda e: -e.elapsed_s)
        ahead0 = sum(e.remaining_s for e in active if e.phase != JobPhase.FINISHING)
        slots = max(1, self.executor.capacity)
        queued = [
            QueueEntry(job=job, position=i + 1, eta_s=(ahead0 + ahead) / slots, run_s=cost)
            for i, (job, ahead, cost) in enumerate(self.order.ordered_with_work(limit))
        ]
        first = running[0] if running else None
        return QueueSnapshot(
            running=first.job if first else None,
            progress=first,
            active=active,
            queued=queued,
            paused=self._paused,
            counts={
                "queued": len(self.order),
                "running": len(running),
                "starting": sum(1 for e in active if e.phase == JobPhase.STARTING),
                "finishing": sum(1 for e in active if e.phase == JobPhase.FINISHING),
                "users_waiting": self.order.users(),
            },
            workers=self.executor.workers(),
        )

    def _queued_eta(self, job_id: str) -> float | None:
        self._refresh_costs()
        ahead = self.order.work_ahead(job_id)
        if ahead is None:
            return None
        now = time.monotonic()
        running = sum(self._remaining(a, now) for a in self._active.values() if a.phase != JobPhase.FINISHING)
        return (running + ahead) / max(1, self.executor.capacity)

    def _remaining(self, active: _Active, now: float) -> float:
        if active.phase == JobPhase.FINISHING:
            return 0.0
        if active.started_mono is None:
            return active.cost
        elapsed = now - active.started_mono
        left = active.cost - elapsed
        if left <= 0 and active.step > 0 and active.total > active.step:
            left = elapsed * (active.total - active.step) / active.step  # overran: trust progress
        return max(0.0, left)

    def _estimate(self, job: Job) -> float:
        params = job.params
        if "kind" not in params or "model" not in params:
            params = {"kind": job.kind, "model": job.model, **params}
        return self.costs.estimate(params)

    def _refresh_costs(self) -> None:
        if self.costs.version == self._cost_version:
            return
        now = time.monotonic()
        if len(self.order) > COST_REFRESH_EAGER_MAX and now - self._cost_refreshed < COST_REFRESH_S:
            return
        self.order.refresh_costs()
        for active in self._active.values():
            active.cost = self._estimate(active.job)
        self._cost_version = self.costs.version
        self._cost_refreshed = now

    # -- dispatching -------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._dispatch()
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:
                log.warning("dispatch paused: %s", exc.message)
                await asyncio.sleep(1.0)
                self._wake.set()
            except Exception:
                log.exception("dispatcher failed; retrying in 1 s")
                await asyncio.sleep(1.0)
                self._wake.set()

    async def _dispatch(self) -> None:
        while not self._paused and not self._stopping and len(self.order) and self.executor.free_slots() > 0:
            job = self.order.pop()
            if job is None:
                return
            now = self.clock()
            # before any await: until `served` runs, the member's next job would be ranked
            # with their old turn and positions seen meanwhile would jump back and forth
            previous_turn = self.order.served(job.user_id, now.timestamp())
            if job.attempts >= job.max_tries:
                await self._fail_exhausted(job)
                continue
            try:
                banned = await self._banned_since_queued(job)
            except BaseException:
                self.order.restore_served(job.user_id, previous_turn)
                self.order.add(job)
                raise
            if banned:
                continue
            active = _Active(job=job, cost=self._estimate(job))
            self._active[job.id] = active
            try:
                claimed = await self.store.claim_job(
                    job.id,
                    owner=self.owner_id,
                    lease_expires_at=now + timedelta(seconds=self.settings.lease_s),
                    now=now,
                )
            except BaseException:
                self._active.pop(job.id, None)
                self.order.restore_served(job.user_id, previous_turn)
                self.order.add(job)
                raise
            if claimed is None:
                self._active.pop(job.id, None)
                self.order.restore_served(job.user_id, previous_turn)
                await self._claim_refused(job)
                continue
            active.job = claimed
            if active.cancel:  # cancelled while we were claiming
                claimed.cancel_requested = True
                await self._finish(
                    claimed.id, Outcome(state=JobState.CANCELLED, error="Cancelled before it started.")
                )
                continue
            active.phase = JobPhase.RUNNING
            try:
                await self.executor.execute(claimed)
            except Exception:
                log.exception("job %s: the executor refused it", claimed.id)
                await self._finish(
                    claimed.id,
                    Outcome(
                        state=JobState.FAILED,
                        retryable=True,
                        error=f"The worker could not take job {claimed.id}.",
                    ),
                )

    async def _banned_since_queued(self, job: Job) -> bool:
        """Bans are checked at submit and again here, before the claim: a ban made after the job
        was queued (by another process, or racing the admin's purge) stops it before it runs."""
        record = await self.store.get_user(job.user_id)
        if not record.banned:
            return False
        done = await self.store.finish_job(
            job.id,
            owner=None,
            state=JobState.CANCELLED,
            cancel_requested=True,
            error="Cancelled before it started: its owner is banned from using this bot.",
        )
        if done is not None:
            self._bus.emit(_Event("finished", done))
        log.info("job %s not started: %s was banned after queueing it", job.id, job.user_id)
        return True

    async def _claim_refused(self, job: Job) -> None:
        fresh = await self.store.get_job(job.id)
        if fresh is None:
            log.warning("job %s vanished from the store before it could start", job.id)
        elif fresh.state is JobState.QUEUED and fresh.cancel_requested:
            done = await self.store.finish_job(
                job.id, owner=None, state=JobState.CANCELLED, error="Cancelled before it started."
            )
            if done is not None:
                self._bus.emit(_Event("finished", done))
        else:
            log.info("job %s was taken by %s", job.id, fresh.lease_owner)

    async def _fail_exhausted(self, job: Job) -> None:
        done = await self.store.finish_job(
            job.id,
            owner=None,
            state=JobState.FAILED,
            error=(
                f"The worker stopped {job.attempts} times while running this job, so it was given up. "
                "Please try again, maybe with fewer steps or a smaller size."
            ),
        )
        if done is not None:
            self._bus.emit(_Event("finished", done))

    # -- ExecutionSink (called on the loop by the executor) ----------------------------------

    def job_started(self, job_id: str, *, worker_id: str) -> None:
        active = self._active.get(job_id)
        if active is None:
            return
        active.started_mono = time.monotonic()
        active.worker_id = worker_id
        active.total = int(active.job.params.get("steps") or 0)
        self._bus.emit(_Event("started", active.job))

    def job_progress(self, job_id: str, step: int, total: int, preview: PreviewFn | None) -> None:
        active = self._active.get(job_id)
        if active is None:
            return
        active.step, active.total = step, total
        if preview is not None:
            active.preview = preview
        now = time.monotonic()
        if now - active.last_progress >= self.settings.progress_edit_interval_s:
            active.last_progress = now
            self._bus.emit(_Event("progress", active.job, step=step, total=total, preview=active.preview))
            active.preview = None

    def job_gpu_done(self, job_id: str) -> None:
        """Optional sink call: the device is done with the job, only encoding/transfer remain."""
        active = self._active.get(job_id)
        if active is not None:
            active.phase = JobPhase.FINISHING

    def slot_free(self) -> None:
        self._wake.set()

    def job_finished(self, job_id: str, outcome: Outcome) -> None:
        active = self._active.get(job_id)
        if active is not None:
            active.phase = JobPhase.FINISHING
        self._spawn(self._finish(job_id, outcome), name=f"finish-{job_id[:8]}")

    # -- finishing ---------------------------------------------------------------------------

    async def _finish(self, job_id: str, outcome: Outcome) -> None:
        active = self._active.get(job_id)
        if active is None:
            log.warning("job %s: outcome %s for a job this queue is not running", job_id, outcome.state.value)
            return
        job = active.job
        if self._stopping and outcome.state is JobState.CANCELLED and not active.cancel:
            self._active.pop(job_id, None)
            await self._interrupted(job_id, job)
            return
        if outcome.retryable and job.attempts < job.max_tries:
            requeued = await self._store_retry(lambda: self.store.requeue_job(job_id, owner=self.owner_id))
            self._active.pop(job_id, None)
            if requeued is not None:
                self.order.add(requeued)
                self._wake.set()
            log.warning("job %s: worker lost it (%s); re-queued at the front", job_id, outcome.error)
            return
        changes: dict[str, Any] = {
            "gpu_seconds": round(outcome.gpu_seconds, 3),
            "timings": {**job.timings, **{k: round(v, 4) for k, v in outcome.timings.items()}},
        }
        if job.started_at is not None:
            changes["queue_wait_s"] = round(max(0.0, (job.started_at - job.created_at).total_seconds()), 3)
        if outcome.state is JobState.COMPLETE and outcome.result is not None:
            changes["result_path"] = outcome.result.path
            changes["result_bytes"] = outcome.result.size_bytes
        elif outcome.state is JobState.CANCELLED:
            changes["error"] = outcome.error or "Cancelled."
        elif outcome.state is JobState.FAILED:
            changes["error"] = outcome.error or f"Something went wrong with job {job_id}."
        done = await self._store_retry(
            lambda: self.store.finish_job(job_id, owner=self.owner_id, state=outcome.state, **changes)
        )
        self._active.pop(job_id, None)
        self._wake.set()
        if done is None:
            log.error(
                "job %s: could not record its end (%s): lease lost or store down", job_id, outcome.state.value
            )
            return
        if outcome.state is JobState.COMPLETE:
            self._mark_offered(job_id)
        # listeners first (delivery should not wait on bookkeeping), then the request-log counters
        self._bus.emit(_Event("finished", done, result=outcome.result))
        if outcome.state is JobState.COMPLETE and outcome.gpu_seconds > 0:
            self.costs.observe(self._cost_params(done), outcome.gpu_seconds)
            self._costs_dirty = True  # saved by the maintenance loop (and at stop)
        if outcome.gpu_seconds > 0 or outcome.state is JobState.COMPLETE:
            self._count_usage(done, outcome.gpu_seconds)
            try:
                await self.store.add_usage(done.user_id, jobs=1, gpu_seconds=outcome.gpu_seconds)
            except StoreUnavailable:
                log.warning("job %s: usage not recorded (store unavailable)", job_id)
        t = outcome.timings
        log.info(
            "job %s %s: %s %s for %s, waited %.1fs, gpu %.2fs, load %.2fs, encode %.2fs, try %d%s",
            job_id,
            outcome.state.value,
            done.kind,
            done.model,
            done.user_id,
            done.queue_wait_s or 0.0,
            outcome.gpu_seconds,
            t.get("load_s", 0.0),
            t.get("encode_s", 0.0),
            done.attempts,
            f" ({outcome.error})" if outcome.error and outcome.state is not JobState.COMPLETE else "",
        )

    def _cost_params(self, job: Job) -> dict[str, Any]:
        return {"kind": job.kind, "model": job.model, **job.params}

    async def _store_retry(self, op: Callable[[], Any], tries: int = 5) -> Any:
        delay = 0.25
        for attempt in range(tries):
            try:
                return await op()
            except StoreUnavailable:
                if attempt == tries - 1:
                    raise
                await asyncio.sleep(delay)
                delay *= 2
        return None

    async def _interrupted(self, job_id: str, job: Job | None) -> None:
        """A job stopped by our own shutdown goes back to the queue without losing a try."""
        try:
            requeued = await self.store.requeue_job(job_id, owner=self.owner_id)
            if requeued is not None:
                await self.store.update_job(job_id, attempts=max(0, requeued.attempts - 1))
                log.info("job %s interrupted by shutdown: back in the queue", job_id)
        except StoreUnavailable:
            log.warning("job %s: could not re-queue at shutdown; its lease will expire instead", job_id)

    # -- recovery ----------------------------------------------------------------------------

    def _orphaned(self, job: Job, now: datetime) -> bool:
        if job.lease_owner == self.owner_id:
            return False
        if job.lease_expires_at is None or job.lease_expires_at < now:
            return True
        host, _, rest = (job.lease_owner or "").partition(":")
        pid_text = rest.partition(":")[0]
        if host != socket.gethostname() or not pid_text.isdigit():
            return False  # another machine's worker: trust its lease
        pid = int(pid_text)
        return pid == os.getpid() or not _pid_alive(pid)

    async def _recover(self, job: Job, *, why: str) -> None:
        if job.cancel_requested:
            done = await self.store.finish_job(
                job.id, owner=None, state=JobState.CANCELLED, error="Cancelled."
            )
        elif job.attempts >= job.max_tries:
            done = await self.store.finish_job(
                job.id,
                owner=None,
                state=JobState.FAILED,
                error=(
                    f"The worker stopped {job.attempts} times while running this job, so it was given up. "
                    "Please try again, maybe with fewer steps or a smaller size."
                ),
            )
        else:
            requeued = await self.store.requeue_job(job.id, owner=None)
            if requeued is not None:
                log.warning(
                    "job %s: %s; re-queued at the front (try %d of %d next)",
                    job.id,
                    why,
                    requeued.attempts + 1,
                    requeued.max_tries,
                )
                if requeued.id not in self.order:
                    self.order.add(requeued)
                self._wake.set()
            return
        if done is not None:
            log.warning("job %s: %s; %s", job.id, why, done.state.value)
            self._bus.emit(_Event("finished", done))

    async def _enqueue_loaded(self, job: Job) -> None:
        if job.id in self.order or job.id in self._active:
            return
        if job.cancel_requested:
            done = await self.store.finish_job(
                job.id, owner=None, state=JobState.CANCELLED, error="Cancelled."
            )
            if done is not None:
                self._bus.emit(_Event("finished", done))
        elif job.attempts >= job.max_tries:
            await self._fail_exhausted(job)
        else:
            self.order.add(job)

    async def _maintenance_loop(self) -> None:
        period = max(0.05, min(self.settings.lease_s / 3, 5.0))
        while True:
            await asyncio.sleep(period)
            try:
                await self._maintain()
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:
                log.warning("queue maintenance skipped: %s", exc.message)
            except Exception:
                log.exception("queue maintenance failed")

    async def _maintain(self) -> None:
        now = self.clock()
        expires = now + timedelta(seconds=self.settings.lease_s)
        for job_id, active in list(self._active.items()):
            if active.phase == JobPhase.CLAIMING:
                continue
            if not await self.store.renew_lease(job_id, owner=self.owner_id, lease_expires_at=expires):
                log.error("job %s: lease lost (another worker took it over?)", job_id)
        for job in await self.store.expired_leases(now):
            if job.id not in self._active and job.lease_owner != self.owner_id:
                await self._recover(job, why=f"the lease of {job.lease_owner} expired")
        self._refresh_costs()
        self.order.forget_idle_users()
        if self._costs_dirty:
            self._costs_dirty = False
            await self.costs.save(self.store)

    def _spawn(self, coro: Any, *, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("queue task %s failed", task.get_name(), exc_info=task.exception())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _past(state: JobState) -> str:
    return {"complete": "finished", "failed": "failed", "cancelled": "been cancelled"}.get(
        state.value, state.value
    )
