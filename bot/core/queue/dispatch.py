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
from bot.core.jobs import Job, JobState
from bot.core.queue.eta import Estimates
from bot.core.queue.finish import Finisher, end_unleased, exhausted_error
from bot.core.queue.state import InFlight, QueueState
from bot.core.store.base import StoreUnavailable
from generation import failures
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
        """Start fair next jobs while workers have room."""
        state = self.state
        while self._may_start():
            job = state.order.pop()
            if job is None:
                return
            now = state.clock()
            # before any await: until `served` runs, the member's next job would be ranked
            # with their old turn and positions seen meanwhile would jump back and forth
            previous_turn = state.order.served(job.user_id, now.timestamp())
            if job.attempts >= job.max_tries:
                await end_unleased(state, job.id, JobState.FAILED, exhausted_error(job.attempts))
                continue
            try:
                banned = await self._banned_since_queued(job)
            except BaseException:
                self._put_back(job, previous_turn)
                raise
            if not banned:
                await self._claim_and_hand_over(job, previous_turn, now)

    def _put_back(self, job: Job, previous_turn: float | None, *, requeue: bool = True) -> None:
        """Undo taking `job`: the member's turn, and (with `requeue`) its place in line."""
        self.state.order.restore_served(job.user_id, previous_turn)
        if requeue:
            self.state.order.add(job)

    async def _claim_and_hand_over(self, job: Job, previous_turn: float | None, now: datetime) -> None:
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
            return
        in_flight.job = claimed
        if in_flight.cancel:  # cancelled while we were claiming
            claimed.cancel_requested = True
            await self.finisher.finish(
                claimed.id, Outcome(state=JobState.CANCELLED, error=failures.CANCELLED_BEFORE_START)
            )
            return
        in_flight.phase = JobPhase.RUNNING
        try:
            await state.executor.execute(claimed)
        except Exception:
            log.exception("job %s: the executor refused it", claimed.id)
            await self.finisher.finish(
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
