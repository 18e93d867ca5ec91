"""What members and admins do to the queue: cancel a job (queued at once, running at its next
step), and pause or resume the whole queue (remembered across restarts)."""

from __future__ import annotations

import logging

from bot.core.jobs import Job, JobState
from bot.core.queue.errors import AlreadyFinished, JobNotFound, NotAllowed
from bot.core.queue.finish import end_unleased
from bot.core.queue.state import InFlight, QueueState
from generation.phases import JobPhase

log = logging.getLogger(__name__)

PAUSED_KEY = "queue_paused"


class Controls:
    """Cancel, pause and resume; see the module docstring."""

    def __init__(self, state: QueueState) -> None:
        self.state = state

    async def load_paused(self) -> None:
        paused = await self.state.store.get_meta(PAUSED_KEY)
        self.state.paused = bool(paused.get("paused")) if isinstance(paused, dict) else bool(paused)

    async def pause(self, by: str) -> None:
        """Stop starting jobs (running ones finish) and refuse new ones until resumed."""
        self.state.paused = True
        await self._remember_paused(by)
        log.info("queue paused by %s", by)

    async def resume(self, by: str) -> None:
        self.state.paused = False
        await self._remember_paused(by)
        log.info("queue resumed by %s", by)
        self.state.wake.set()

    async def _remember_paused(self, by: str) -> None:
        at = self.state.clock().isoformat()
        await self.state.store.set_meta(PAUSED_KEY, {"paused": self.state.paused, "by": by, "at": at})

    async def cancel(self, job_id: str, *, by_user_id: str, is_admin: bool = False) -> Job:
        """Cancel a queued job at once, or a running one at its next step (its owner or an admin)."""
        state = self.state
        job = state.live_job(job_id) or await state.store.get_job(job_id)
        if job is None:
            raise JobNotFound("There is no job with that id.")
        if job.user_id != by_user_id and not is_admin:
            raise NotAllowed("You can only cancel your own jobs.")
        who = "an admin" if job.user_id != by_user_id else "you"
        if job_id in state.order:
            return await self._cancel_queued(job, by_user_id, who)
        in_flight = state.in_flight.get(job_id)
        if in_flight is not None:
            return await self._cancel_on_worker(in_flight, by_user_id)
        if job.state.is_final:
            raise AlreadyFinished(f"That job has already {_past(job.state)}.")
        # queued or running under another bot process: ask through the store
        if job.state is JobState.QUEUED:
            done = await state.store.finish_job(
                job_id,
                owner=None,
                state=JobState.CANCELLED,
                cancel_requested=True,
                error=f"Cancelled by {who}.",
            )
            if done is not None:
                return done
        return await state.store.update_job(job_id, cancel_requested=True) or job

    async def _cancel_queued(self, job: Job, by_user_id: str, who: str) -> Job:
        state = self.state
        state.order.remove(job.id)
        done = await end_unleased(
            state, job.id, JobState.CANCELLED, f"Cancelled by {who} before it started.", cancel_requested=True
        )
        log.info("job %s cancelled while queued by %s", job.id, by_user_id)
        return done or await state.store.get_job(job.id) or job

    async def _cancel_on_worker(self, in_flight: InFlight, by_user_id: str) -> Job:
        if in_flight.phase == JobPhase.FINISHING:
            raise AlreadyFinished("That job has already finished generating; its result is on its way.")
        job_id = in_flight.job.id
        in_flight.cancel = True
        in_flight.job.cancel_requested = True
        updated = await self.state.store.update_job(job_id, cancel_requested=True)
        if in_flight.phase != JobPhase.CLAIMING:
            await self.state.executor.cancel(job_id)
        log.info("job %s: cancel requested by %s while running", job_id, by_user_id)
        return updated or in_flight.job


def _past(state: JobState) -> str:
    return {"complete": "finished", "failed": "failed", "cancelled": "been cancelled"}.get(
        state.value, state.value
    )
