"""Starting jobs: whenever a worker has room, take the fair next job, check its owner is still
allowed, claim it in the store (a lease) and hand it to the executor.

Who goes next is :mod:`bot.core.fair_order`'s answer; this module only acts on it, and puts the
job and the member's turn back exactly as they were when a step fails part-way.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from bot.core.executor import Outcome
from bot.core.fair_order import batch_companions
from bot.core.jobs import Job, JobState
from bot.core.queue.eta import Estimates
from bot.core.queue.finish import Finisher, end_unleased, exhausted_error
from bot.core.queue.state import InFlight, QueueState
from bot.core.store.base import StoreUnavailable
from generation import failures
from generation.batching import compatible_key
from generation.phases import JobPhase

log = logging.getLogger(__name__)


class Dispatcher:
    """Runs the dispatch loop; see the module docstring."""

    def __init__(self, state: QueueState, estimates: Estimates, finisher: Finisher) -> None:
        self.state = state
        self.estimates = estimates
        self.finisher = finisher

    async def run(self) -> None:
        """Dispatch whenever woken, until cancelled; a failing store pauses it for a second."""
        state = self.state
        while True:
            await state.wake.wait()
            state.wake.clear()
            try:
                await self.dispatch()
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:
                log.warning("dispatch paused: %s", exc.message)
                await asyncio.sleep(1.0)
                state.wake.set()
            except Exception:
                log.exception("dispatcher failed; retrying in 1 s")
                await asyncio.sleep(1.0)
                state.wake.set()

    def _may_start(self) -> bool:
        state = self.state
        return (
            not state.paused
            and not state.stopping
            and len(state.order) > 0
            and state.executor.free_slots() > 0
        )

    async def dispatch(self) -> None:
        """Start fair next jobs (each with the jobs that may share its pipeline call) while
        workers have room."""
        state = self.state
        while self._may_start():
            job = state.order.pop()
            if job is None:
                return
            now = state.clock()
            # before any await: until `served` runs, the member's next job would be ranked
            # with their old turn and positions seen meanwhile would jump back and forth
            taken = [job, *self._companions(job)]
            pairs = [(j, state.order.served(j.user_id, now.timestamp())) for j in taken]
            claimed: list[Job] = []
            try:
                for i, (one, turn) in enumerate(pairs):
                    ready = await self._take(one, turn, now, put_back=pairs[i + 1 :])
                    if ready is not None:
                        claimed.append(ready)
            finally:
                if claimed:
                    await self._hand_over(claimed)

    def _companions(self, head: Job) -> list[Job]:
        """The queued jobs that join `head`'s call (out of the order already); none when the
        executor cannot run a batch."""
        settings = self.state.settings
        limit = settings.batch_max_videos if head.kind == "video" else settings.batch_max_images
        if limit <= 1 or not hasattr(self.state.executor, "execute_batch"):
            return []
        following = self.state.order.ordered(limit=settings.batch_window)
        chosen = batch_companions(head, following, limit=limit - 1, key=_batch_key)
        for job in chosen:
            self.state.order.remove(job.id)
        return chosen

    async def _take(
        self,
        job: Job,
        previous_turn: float | None,
        now: datetime,
        *,
        put_back: list[tuple[Job, float | None]],
    ) -> Job | None:
        """Check and claim one taken job; the claimed record, or None when it is not to run.
        When a step raises, `put_back` (the jobs taken with it, not yet claimed) go back too."""
        try:
            if job.attempts >= job.max_tries:
                await end_unleased(self.state, job.id, JobState.FAILED, exhausted_error(job.attempts))
                return None
            try:
                banned = await self._banned_since_queued(job)
            except BaseException:
                self._put_back(job, previous_turn)
                raise
            return None if banned else await self._claim(job, previous_turn, now)
        except BaseException:
            for other, turn in reversed(put_back):
                self._put_back(other, turn)
            raise

    def _put_back(self, job: Job, previous_turn: float | None, *, requeue: bool = True) -> None:
        """Undo taking `job`: the member's turn, and (with `requeue`) its place in line."""
        self.state.order.restore_served(job.user_id, previous_turn)
        if requeue:
            self.state.order.add(job)

    async def _claim(self, job: Job, previous_turn: float | None, now: datetime) -> Job | None:
        state = self.state
        in_flight = InFlight(job=job, cost=self.estimates.estimate(job))
        state.in_flight[job.id] = in_flight
        try:
            claimed = await state.store.claim_job(
                job.id,
                owner=state.owner_id,
                lease_expires_at=now + timedelta(seconds=state.settings.lease_s),
                now=now,
            )
        except BaseException:
            state.in_flight.pop(job.id, None)
            self._put_back(job, previous_turn)
            raise
        if claimed is None:
            state.in_flight.pop(job.id, None)
            self._put_back(job, previous_turn, requeue=False)
            await self._claim_refused(job)
            return None
        in_flight.job = claimed
        if in_flight.cancel:  # cancelled while we were claiming: it leaves the batch's list
            claimed.cancel_requested = True
            await self.finisher.finish(
                claimed.id, Outcome(state=JobState.CANCELLED, error=failures.CANCELLED_BEFORE_START)
            )
            return None
        in_flight.phase = JobPhase.RUNNING
        return claimed

    async def _hand_over(self, jobs: list[Job]) -> None:
        """Give the claimed jobs to the executor: one, or a batch for one pipeline call."""
        executor = self.state.executor
        try:
            if len(jobs) == 1:
                await executor.execute(jobs[0])
            else:
                await executor.execute_batch(jobs)  # type: ignore[attr-defined]
        except Exception:
            log.exception("jobs %s: the executor refused them", ", ".join(j.id for j in jobs))
            for job in jobs:
                await self.finisher.finish(
                    job.id,
                    Outcome(
                        state=JobState.FAILED,
                        retryable=True,
                        error=f"The worker could not take job {job.id}.",
                    ),
                )

    async def _banned_since_queued(self, job: Job) -> bool:
        """Bans are checked at submit and again here, before the claim: a ban made after the job
        was queued (by another process, or racing the admin's purge) stops it before it runs."""
        record = await self.state.store.get_user(job.user_id)
        if not record.banned:
            return False
        await end_unleased(
            self.state,
            job.id,
            JobState.CANCELLED,
            "Cancelled before it started: its owner is banned from using this bot.",
            cancel_requested=True,
        )
        log.info("job %s not started: %s was banned after queueing it", job.id, job.user_id)
        return True

    async def _claim_refused(self, job: Job) -> None:
        fresh = await self.state.store.get_job(job.id)
        if fresh is None:
            log.warning("job %s vanished from the store before it could start", job.id)
        elif fresh.state is JobState.QUEUED and fresh.cancel_requested:
            await end_unleased(self.state, job.id, JobState.CANCELLED, failures.CANCELLED_BEFORE_START)
        else:
            log.info("job %s was taken by %s", job.id, fresh.lease_owner)


def _batch_key(job: Job) -> tuple[object, ...] | None:
    return compatible_key(job.kind, job.model, job.params)
