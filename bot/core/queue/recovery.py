"""What a crash leaves behind, found and put right: at start-up and by a periodic sweep.

A job whose worker is gone (its lease expired, or its owner process on this machine is dead) goes
back to the front of the queue with its attempt counted, or fails with a message after
``MAX_TRIES``. The same maintenance loop renews the leases of this process's running jobs,
retries job ends the store refused, and saves what the cost model learned.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from datetime import datetime, timedelta

from bot.core.jobs import Job, JobState
from bot.core.queue.eta import Estimates
from bot.core.queue.finish import Finisher, end_unleased, exhausted_error
from bot.core.queue.state import QueueState
from bot.core.store.base import StoreUnavailable
from generation import failures
from generation.phases import JobPhase

log = logging.getLogger(__name__)


class Recovery:
    """Loads the queue at start and keeps it healthy while running; see the module docstring."""

    def __init__(self, state: QueueState, estimates: Estimates, finisher: Finisher) -> None:
        self.state = state
        self.estimates = estimates
        self.finisher = finisher

    async def load(self) -> int:
        """Recover orphaned running jobs and queue the waiting ones; returns how many were recovered."""
        state = self.state
        now = state.clock()
        recovered = 0
        for job in await state.store.jobs_in_states([JobState.IN_PROGRESS]):
            if self.orphaned(job, now):
                await self.recover(job, why="its worker stopped")
                recovered += 1
            else:
                log.info("job %s is running under %s; leaving it to its lease", job.id, job.lease_owner)
        for job in await state.store.jobs_in_states([JobState.QUEUED]):
            await self._enqueue_loaded(job)
        return recovered

    def orphaned(self, job: Job, now: datetime) -> bool:
        """Its lease expired, or its owner is a dead process on this machine (or an earlier us)."""
        if job.lease_owner == self.state.owner_id:
            return False
        if job.lease_expires_at is None or job.lease_expires_at < now:
            return True
        host, _, rest = (job.lease_owner or "").partition(":")
        pid_text = rest.partition(":")[0]
        if host != socket.gethostname() or not pid_text.isdigit():
            return False  # another machine's worker: trust its lease
        pid = int(pid_text)
        return pid == os.getpid() or not pid_alive(pid)

    async def recover(self, job: Job, *, why: str) -> None:
        state = self.state
        if job.cancel_requested:
            done = await end_unleased(state, job.id, JobState.CANCELLED, failures.CANCELLED)
        elif job.attempts >= job.max_tries:
            done = await end_unleased(state, job.id, JobState.FAILED, exhausted_error(job.attempts))
        else:
            requeued = await state.store.requeue_job(job.id, owner=None)
            if requeued is not None:
                log.warning(
                    "job %s: %s; re-queued at the front (try %d of %d next)",
                    job.id,
                    why,
                    requeued.attempts + 1,
                    requeued.max_tries,
                )
                if requeued.id not in state.order:
                    state.order.add(requeued)
                state.wake.set()
            return
        if done is not None:
            log.warning("job %s: %s; %s", job.id, why, done.state.value)

    async def _enqueue_loaded(self, job: Job) -> None:
        state = self.state
        if job.id in state.order or job.id in state.in_flight:
            return
        if job.cancel_requested:
            await end_unleased(state, job.id, JobState.CANCELLED, failures.CANCELLED)
        elif job.attempts >= job.max_tries:
            await end_unleased(state, job.id, JobState.FAILED, exhausted_error(job.attempts))
        else:
            state.order.add(job)

    # -- maintenance ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Maintain every lease_s / 3 (at most 5 s) until cancelled; failures are logged, not raised."""
        period = max(0.05, min(self.state.settings.lease_s / 3, 5.0))
        while True:
            await asyncio.sleep(period)
            try:
                await self.maintain()
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:
                log.warning("queue maintenance skipped: %s", exc.message)
            except Exception:
                log.exception("queue maintenance failed")

    async def maintain(self) -> None:
        state = self.state
        await self.finisher.retry_pending()
        now = state.clock()
        expires = now + timedelta(seconds=state.settings.lease_s)
        for job_id, in_flight in list(state.in_flight.items()):
            if in_flight.phase == JobPhase.CLAIMING:
                continue
            if await state.store.renew_lease(job_id, owner=state.owner_id, lease_expires_at=expires):
                continue
            # a job whose end the store has recorded (its finisher resumes soon) gave the lease up
            fresh = await state.store.get_job(job_id)
            if job_id in state.in_flight and (fresh is None or not fresh.state.is_final):
                log.error("job %s: lease lost (another worker took it over?)", job_id)
        for job in await state.store.expired_leases(now):
            # this process's own expired leases are ends the store refused: the finisher retries them
            if job.id not in state.in_flight and job.lease_owner != state.owner_id:
                await self.recover(job, why=f"the lease of {job.lease_owner} expired")
        self.estimates.refresh()
        state.order.forget_idle_users()
        await self.estimates.save_if_learned()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
