"""How a job's run ends in the store: recorded as complete, failed or cancelled, put back for
another try when its worker was lost, or put back untouched after this process's own shutdown;
then listeners, the cost model and the member's usage hear of it.

The store may refuse the write (down, locked). The write is retried with back-off while the job
shows as finishing; if the store keeps refusing, the job leaves the workers' list (no member
sees it "finishing" for ever, and its lease is no longer renewed) and the maintenance loop keeps
retrying, more and more slowly, until the store takes it: the end is then recorded and delivered
as usual. If this process stops first, the lease expires and the next start re-queues the job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bot.core.executor import Outcome
from bot.core.jobs import Job, JobState
from bot.core.moderation import refused_as_nsfw
from bot.core.queue.eta import Estimates
from bot.core.queue.limits import Limits
from bot.core.queue.redelivery import Redelivery
from bot.core.queue.state import QueueState
from bot.core.store.base import StoreUnavailable
from generation import failures

log = logging.getLogger(__name__)

#: the first pause before writing a job's end again; each later pause doubles
FIRST_RETRY_S = 0.25
#: tries while the job still shows as finishing, before the maintenance loop takes over
BURST_TRIES = 5
#: the longest pause between two tries from the maintenance loop
PENDING_RETRY_MAX_S = 60.0

Write = Callable[[], Awaitable[Job | None]]
Then = Callable[[Job | None], Awaitable[None]]


def charged_seconds(job: Job, outcome: Outcome) -> float:
    """The GPU seconds the member pays for (`Job.gpu_seconds`, what quotas sum): all of them, except
    for a picture their server refuses as NSFW (the device time stays in `timings`)."""
    return 0.0 if refused_as_nsfw(job, outcome.result) else outcome.gpu_seconds


def exhausted_error(attempts: int) -> str:
    return (
        f"The worker stopped {attempts} times while running this job, so it was given up. "
        "Please try again, maybe with fewer steps or a smaller size."
    )


async def end_unleased(
    state: QueueState, job_id: str, final: JobState, error: str, **changes: Any
) -> Job | None:
    """Give a job no worker of ours holds (queued, or orphaned) its final state, and tell listeners."""
    done = await state.store.finish_job(job_id, owner=None, state=final, error=error, **changes)
    if done is not None:
        state.bus.finished(done)
    return done


@dataclass
class PendingWrite:
    """A job's end the store refused: what to write, what to do once written, when to try again."""

    job_id: str
    what: str
    write: Write
    then: Then
    tries: int
    due: float


class Finisher:
    """Records how jobs ended; see the module docstring."""

    def __init__(
        self, state: QueueState, estimates: Estimates, limits: Limits, redelivery: Redelivery
    ) -> None:
        self.state = state
        self.estimates = estimates
        self.limits = limits
        self.redelivery = redelivery
        self.pending: dict[str, PendingWrite] = {}
        self.first_retry_s = FIRST_RETRY_S
        self.burst_tries = BURST_TRIES

    async def finish(self, job_id: str, outcome: Outcome) -> None:
        """Record the outcome the executor reported for a job this queue handed it."""
        state = self.state
        in_flight = state.in_flight.get(job_id)
        if in_flight is None:
            log.warning("job %s: outcome %s for a job this queue is not running", job_id, outcome.state.value)
            return
        job = in_flight.job
        store, owner = state.store, state.owner_id
        if state.stopping and outcome.state is JobState.CANCELLED and not in_flight.cancel:
            self._release(job_id)
            await self.interrupted(job_id)
        elif outcome.retryable and job.attempts < job.max_tries:

            async def requeued(record: Job | None) -> None:
                self._requeued(job_id, record, outcome)

            await self._write(
                job_id, "its return to the queue", lambda: store.requeue_job(job_id, owner=owner), requeued
            )
        else:
            changes = self._end_changes(job, outcome)

            async def ended(record: Job | None) -> None:
                await self._ended(job_id, record, outcome)

            await self._write(
                job_id,
                f"its end ({outcome.state.value})",
                lambda: store.finish_job(job_id, owner=owner, state=outcome.state, **changes),
                ended,
            )

    @staticmethod
    def _end_changes(job: Job, outcome: Outcome) -> dict[str, Any]:
        changes: dict[str, Any] = {
            "gpu_seconds": round(charged_seconds(job, outcome), 3),
            "timings": {**job.timings, **{k: round(v, 4) for k, v in outcome.timings.items()}},
        }
        if job.started_at is not None:
            changes["queue_wait_s"] = round(max(0.0, (job.started_at - job.created_at).total_seconds()), 3)
        if outcome.state is JobState.COMPLETE and outcome.result is not None:
            changes["result_path"] = outcome.result.path
            changes["result_bytes"] = outcome.result.size_bytes
            changes["nsfw_detected"] = outcome.result.nsfw_detected
        elif outcome.state is JobState.CANCELLED:
            changes["error"] = outcome.error or failures.CANCELLED
        elif outcome.state is JobState.FAILED:
            changes["error"] = outcome.error or f"Something went wrong with job {job.id}."
        return changes

    def _requeued(self, job_id: str, record: Job | None, outcome: Outcome) -> None:
        if record is not None and record.id not in self.state.order:
            self.state.order.add(record)
            self.state.wake.set()
        log.warning("job %s: worker lost it (%s); re-queued at the front", job_id, outcome.error)

    async def _ended(self, job_id: str, done: Job | None, outcome: Outcome) -> None:
        if done is None:
            log.error("job %s: could not record its end (%s): lease lost", job_id, outcome.state.value)
            return
        if outcome.state is JobState.COMPLETE:
            self.redelivery.mark_offered(job_id)
        # listeners first (delivery should not wait on bookkeeping), then the request-log counters
        self.state.bus.finished(done, outcome.result)
        if outcome.state is JobState.COMPLETE and outcome.gpu_seconds > 0:
            self.estimates.observe(done, outcome.gpu_seconds)
        if outcome.gpu_seconds > 0 or outcome.state is JobState.COMPLETE:
            charged = charged_seconds(done, outcome)
            self.limits.count_usage(done, charged)
            try:
                await self.state.store.add_usage(done.user_id, jobs=1, gpu_seconds=charged)
            except StoreUnavailable:
                log.warning("job %s: usage not recorded (store unavailable)", job_id)
        _log_end(done, outcome)

    # -- writing through a refusing store ---------------------------------------------------------

    async def _write(self, job_id: str, what: str, write: Write, then: Then) -> None:
        delay = self.first_retry_s
        for attempt in range(1, self.burst_tries + 1):
            try:
                record = await write()
            except Exception as exc:
                _log_refusal(job_id, what, attempt, exc)
            else:
                self._release(job_id)
                await then(record)
                return
            if attempt < self.burst_tries:
                await asyncio.sleep(delay)
                delay *= 2
        self._release(job_id)
        log.error(
            "job %s: the store refused %s %d times; trying again from the maintenance loop",
            job_id,
            what,
            self.burst_tries,
        )
        self.pending[job_id] = PendingWrite(
            job_id, what, write, then, tries=self.burst_tries, due=time.monotonic() + delay
        )

    async def retry_pending(self, *, all_now: bool = False) -> None:
        """Try the refused writes that are due (every one with `all_now`); never raises."""
        now = time.monotonic()
        for job_id, pending in list(self.pending.items()):
            if pending.due > now and not all_now:
                continue
            try:
                record = await pending.write()
            except Exception as exc:
                pending.tries += 1
                _log_refusal(job_id, pending.what, pending.tries, exc)
                pending.due = now + min(PENDING_RETRY_MAX_S, self.first_retry_s * 2**pending.tries)
                continue
            del self.pending[job_id]
            log.info("job %s: the store took %s after %d tries", job_id, pending.what, pending.tries + 1)
            try:
                await pending.then(record)
            except Exception:
                log.exception("job %s: recording %s failed after the store took it", job_id, pending.what)

    def _release(self, job_id: str) -> None:
        """The job no longer holds a place on a worker: wake the dispatcher for the next one."""
        self.state.in_flight.pop(job_id, None)
        self.state.wake.set()

    async def interrupted(self, job_id: str) -> None:
        """A job stopped by this process's own shutdown goes back to the queue without losing a try."""
        store = self.state.store
        try:
            requeued = await store.requeue_job(job_id, owner=self.state.owner_id)
            if requeued is not None:
                await store.update_job(job_id, attempts=max(0, requeued.attempts - 1))
                log.info("job %s interrupted by shutdown: back in the queue", job_id)
        except StoreUnavailable:
            log.warning("job %s: could not re-queue at shutdown; its lease will expire instead", job_id)


def _log_refusal(job_id: str, what: str, attempt: int, exc: Exception) -> None:
    if isinstance(exc, StoreUnavailable):
        log.warning(
            "job %s: store unavailable while recording %s (try %d): %s", job_id, what, attempt, exc.message
        )
    else:
        log.error("job %s: the store refused %s (try %d)", job_id, what, attempt, exc_info=exc)


def _log_end(done: Job, outcome: Outcome) -> None:
    t = outcome.timings
    log.info(
        "job %s %s: %s %s for %s, waited %.1fs, gpu %.2fs, load %.2fs, encode %.2fs, try %d%s",
        done.id,
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
