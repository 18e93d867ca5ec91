"""The :class:`JobQueue` facade: what the bot, the REST API, the admin commands and the executors
call. It wires the parts together and holds no rule of its own:

- :mod:`~bot.core.queue.limits` decides who may queue what, :mod:`bot.core.fair_order` who goes
  next, :mod:`~bot.core.queue.dispatch` starts jobs, :mod:`~bot.core.queue.finish` records how
  they ended, :mod:`~bot.core.queue.recovery` puts right what a crash left behind,
  :mod:`~bot.core.queue.redelivery` makes each result reach Discord once,
  :mod:`~bot.core.queue.control` cancels and pauses, :mod:`~bot.core.queue.eta` and
  :mod:`~bot.core.queue.snapshot` answer "when" and "what now",
  :mod:`~bot.core.queue.listeners` tells the rest of the bot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

from bot.core.costs import CostModel
from bot.core.executor import Executor, Outcome, PreviewFn, WorkerInfo
from bot.core.jobs import Job, JobState, utcnow
from bot.core.queue.control import Controls
from bot.core.queue.dispatch import Dispatcher
from bot.core.queue.errors import QueuePaused
from bot.core.queue.eta import Estimates
from bot.core.queue.finish import Finisher
from bot.core.queue.limits import Limits
from bot.core.queue.listeners import JobListener
from bot.core.queue.recovery import Recovery
from bot.core.queue.redelivery import Redelivery
from bot.core.queue.snapshot import QueueSnapshot, Submitted, take_snapshot
from bot.core.queue.state import QueueState
from bot.core.results import ResultWriter
from bot.core.store.base import Store, to_store_time
from bot.settings import Settings
from generation.phases import JobPhase

log = logging.getLogger(__name__)


class JobQueue:
    """Fair, persistent job queue in front of one executor; see :mod:`bot.core.queue`.

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
        self.state = QueueState(
            settings=settings, store=store, executor=executor, clock=clock, costs=self.costs
        )
        self.owner_id = self.state.owner_id
        self.order = self.state.order
        self.estimates = Estimates(self.state)
        self.limits = Limits(self.state, self.estimates)
        self.redelivery = Redelivery(self.state, self.results)
        self.finisher = Finisher(self.state, self.estimates, self.limits, self.redelivery)
        self.dispatcher = Dispatcher(self.state, self.estimates, self.finisher)
        self.recovery = Recovery(self.state, self.estimates, self.finisher)
        self.controls = Controls(self.state)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []

    # -- wiring ------------------------------------------------------------------------------

    def add_listener(self, listener: JobListener) -> None:
        self.state.bus.listeners.append(listener)

    def remove_listener(self, listener: JobListener) -> None:
        if listener in self.state.bus.listeners:
            self.state.bus.listeners.remove(listener)

    @property
    def paused(self) -> bool:
        return self.state.paused

    @property
    def started(self) -> bool:
        return self.state.started and not self.state.stopping

    def workers(self) -> list[WorkerInfo]:
        return self.executor.workers()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the queue from the store, recover orphans, start the executor and the loops."""
        state = self.state
        if state.started:
            raise RuntimeError("JobQueue already started")
        await self.estimates.load()
        await self.controls.load_paused()
        recovered = await self.recovery.load()
        state.started = True
        await self.executor.start(self)
        self._loops = [
            asyncio.create_task(self.dispatcher.run(), name="queue-dispatch"),
            asyncio.create_task(self.recovery.run(), name="queue-maintenance"),
        ]
        log.info(
            "queue started as %s: %d queued, %d recovered from a previous run%s",
            self.owner_id,
            len(self.order),
            recovered,
            " (paused)" if state.paused else "",
        )
        state.wake.set()
        await self.redelivery.redeliver_pending()

    async def stop(self, *, graceful: bool = True, timeout_s: float = 30.0) -> None:
        """Stop dispatching; let running jobs finish (graceful, up to `timeout_s`) or stop them at
        their next step. Interrupted jobs go back to the queue without losing a try."""
        state = self.state
        if not state.started or state.stopping:
            return
        state.stopping = True
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        lost = await self.executor.stop(graceful=graceful, timeout_s=timeout_s)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=max(5.0, timeout_s))
        for job_id in set(lost) | set(state.in_flight):
            state.in_flight.pop(job_id, None)
            await self.finisher.interrupted(job_id)
        await self.finisher.retry_pending(all_now=True)
        for job_id in self.finisher.pending:
            log.error("job %s: its end is still unrecorded; the next start re-queues it", job_id)
        await state.bus.drain(timeout_s=5.0)
        await self.estimates.save_if_learned(quiet=True)
        log.info("queue stopped (%d jobs left queued)", len(self.order))

    # -- submitting --------------------------------------------------------------------------

    async def submit(self, job: Job) -> Submitted:
        """Check limits, persist, and queue `job`; raises a UserError a member can read."""
        if not self.started:
            raise QueuePaused("The bot is starting or restarting; try again in a minute.")
        if self.state.paused:
            raise QueuePaused("The queue is paused by the admins right now; please try again later.")
        with self.limits.reserve(job.user_id):
            await self.limits.admit(job)
            self._reset_for_queue(job)
            await self.store.insert_job(job)
            self.order.add(job)
        self.state.wake.set()
        self.state.bus.queued(job)
        position = self.order.position(job.id) or 1
        log.info(
            "job %s queued for %s (%s %s) at position %d", job.id, job.user_id, job.kind, job.model, position
        )
        return Submitted(
            job=job,
            position=position,
            eta_s=self.estimates.queued_eta(job.id) or 0.0,
            run_s=self.order.cost_of(job.id) or 0.0,
        )

    def _reset_for_queue(self, job: Job) -> None:
        job.state = JobState.QUEUED
        job.created_at = to_store_time(self.clock())
        job.attempts = 0
        job.max_tries = self.settings.max_tries
        job.lease_owner = job.lease_expires_at = None
        job.started_at = job.finished_at = None
        job.cancel_requested = False
        job.params = {"kind": job.kind, "model": job.model, **job.params}

    # -- members and admins ------------------------------------------------------------------

    async def cancel(self, job_id: str, *, by_user_id: str, is_admin: bool = False) -> Job:
        """Cancel a queued job at once, or a running one at its next step (its owner or an admin)."""
        return await self.controls.cancel(job_id, by_user_id=by_user_id, is_admin=is_admin)

    async def pause(self, by: str) -> None:
        """Stop starting jobs (running ones finish) and refuse new ones until resumed."""
        await self.controls.pause(by)

    async def resume(self, by: str) -> None:
        await self.controls.resume(by)

    def forget_usage(self, user_id: str | None = None) -> None:
        """Drop the kept GPU-second totals (of one member, or all): call after deleting a member's
        data or editing usage outside the queue, so the next quota check asks the store."""
        self.limits.forget_usage(user_id)

    async def mark_delivered(
        self, job_id: str, message_id: str | None = None, *, url: str | None = None
    ) -> Job | None:
        """Record where a result was posted, so it is never offered again (even after a restart)."""
        return await self.redelivery.mark_delivered(job_id, message_id, url=url)

    async def redeliver_pending(self) -> int:
        """Offer complete Discord jobs whose result was never recorded as posted; returns how many."""
        return await self.redelivery.redeliver_pending()

    # -- reading -----------------------------------------------------------------------------

    def position(self, job_id: str) -> int | None:
        """0 while on a worker, 1 for the next job to start, …; None when neither."""
        if job_id in self.state.in_flight:
            return 0
        return self.order.position(job_id)

    def eta_s(self, job_id: str) -> float | None:
        """Seconds until the job starts (0 when on a worker); None when neither queued nor running."""
        if job_id in self.state.in_flight:
            return 0.0
        return self.estimates.queued_eta(job_id)

    def remaining_s(self, job_id: str) -> float | None:
        """Estimated seconds until a running job's GPU work is done."""
        in_flight = self.state.in_flight.get(job_id)
        return None if in_flight is None else self.estimates.remaining(in_flight, time.monotonic())

    def get(self, job_id: str) -> Job | None:
        """The live record of a queued or running job (None otherwise: ask the store)."""
        return self.state.live_job(job_id)

    def snapshot(self, *, limit: int | None = None) -> QueueSnapshot:
        """Jobs on workers with progress, then queued jobs in fair order with positions and ETAs."""
        return take_snapshot(self.state, self.estimates, limit=limit)

    # -- ExecutionSink (called on the loop by the executor) ----------------------------------

    def job_started(self, job_id: str, *, worker_id: str) -> None:
        in_flight = self.state.in_flight.get(job_id)
        if in_flight is None:
            return
        in_flight.started_mono = time.monotonic()
        in_flight.worker_id = worker_id
        in_flight.total = int(in_flight.job.params.get("steps") or 0)
        self.state.bus.started(in_flight.job)

    def job_progress(self, job_id: str, step: int, total: int, preview: PreviewFn | None) -> None:
        in_flight = self.state.in_flight.get(job_id)
        if in_flight is None:
            return
        in_flight.step, in_flight.total = step, total
        if preview is not None:
            in_flight.preview = preview
        now = time.monotonic()
        if now - in_flight.last_progress >= self.settings.progress_edit_interval_s:
            in_flight.last_progress = now
            self.state.bus.progress(in_flight.job, step, total, in_flight.preview)
            in_flight.preview = None

    def job_gpu_done(self, job_id: str) -> None:
        """The device is done with the job; only encoding or transfer remain."""
        in_flight = self.state.in_flight.get(job_id)
        if in_flight is not None:
            in_flight.phase = JobPhase.FINISHING

    def slot_free(self) -> None:
        self.state.wake.set()

    def job_finished(self, job_id: str, outcome: Outcome) -> None:
        self.job_gpu_done(job_id)
        self._spawn(self.finisher.finish(job_id, outcome), name=f"finish-{job_id[:8]}")

    def _spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("queue task %s failed", task.get_name(), exc_info=task.exception())
