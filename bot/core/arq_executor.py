"""The distributed executor: arq workers on Redis behind the queue's executor seam.

With ``QUEUE_URL=redis://…`` the bot's :class:`bot.core.queue.JobQueue` keeps deciding who goes next
(fairness, quotas, positions, ETA, attempts, all in the store) and this executor only carries the
chosen job to a worker. arq's own queue stays shallow: :meth:`ArqExecutor.free_slots` is the
number of live workers minus the jobs already waiting for or running on a GPU, so a job enters
arq only when a GPU is there to take it, and a burst from one member never jumps the fair order.

The life of a job here, with what arq does in brackets:

1. :meth:`execute` enqueues it under an id made of the job id, its attempt and its claim time
   [``enqueue_job(_job_id=…)``: enqueueing the same dispatch twice is a no-op];
2. a worker with a free GPU picks it and reports ``started`` / ``gpu_soon`` / ``gpu_done`` /
   ``done`` on the event stream; progress is read from its run hash every
   ``PROGRESS_EDIT_INTERVAL_S``. ``gpu_soon`` (:mod:`generation.gpu_forecast`) makes that GPU
   count as free a moment early, so its next job is already queued when the GPU frees;
3. the result [arq's result key, kept ``RESULT_KEEP_S``] holds the encoded file as bytes, or a
   path on shared storage; the bot writes the bytes under ``RESULTS_DIR`` off the event loop;
4. cancel [``Job.abort``] stops it at the next step; a job no worker has started yet is simply
   taken back from arq's queue.

The executor is three parts, one job each: :mod:`bot.core.arq_handoff` (handing over, taking
back, cancelling, the shared state), :mod:`bot.core.arq_watch` (heartbeats, lost workers, lost
jobs) and :mod:`bot.core.arq_transfer` (events, progress, results coming back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from arq.connections import create_pool

from bot.core.arq_handoff import REDIS_DOWN, HandedJob, arq_job_id, as_text
from bot.core.arq_transfer import ResultTransfer
from bot.core.arq_watch import WorkerWatch
from bot.core.executor import RESULT_CRF, ExecutionSink, Outcome, count_batch
from bot.core.jobs import Job, JobState
from bot.core.moderation import NSFW_SPOILER
from generation import failures
from generation.media import png_metadata
from generation.phases import JobPhase
from generation.scaleout import BATCH_FIELD, JobPayload, redis_settings

log = logging.getLogger(__name__)

_ON_GPU = (JobPhase.ENQUEUED, JobPhase.RUNNING)
#: how long start() waits for Redis before leaving it to the monitor loop
START_CONNECT_S = 3.0


class ArqExecutor(WorkerWatch, ResultTransfer):
    """Runs the queue's jobs on arq workers; see the module docstring."""

    name = "arq"

    @property
    def capacity(self) -> int:
        return max(1, len(self._workers))

    async def start(self, sink: ExecutionSink) -> None:
        self._sink = sink
        try:  # a bot must start even while Redis is down: the monitor loop keeps trying
            await asyncio.wait_for(self._connect(retries=0), timeout=START_CONNECT_S)
        except (*REDIS_DOWN, TimeoutError) as exc:
            log.warning(
                "Redis at QUEUE_URL unreachable at start (%s); jobs wait until it answers",
                exc or "no answer",
            )
        self._loops = [
            asyncio.create_task(self._event_loop(), name="arq-events"),
            asyncio.create_task(self._monitor_loop(), name="arq-monitor"),
            asyncio.create_task(self._progress_loop(), name="arq-progress"),
        ]
        self._register_metrics()
        log.info(
            "arq executor on queue %s: %d worker(s) live (%s)",
            self.keys.queue,
            len(self._workers),
            ", ".join(self._workers) or "none yet",
        )
        if self._workers:
            sink.slot_free()

    async def stop(self, *, graceful: bool = True, timeout_s: float = 30.0) -> list[str]:
        self._stopping = True
        deadline = time.monotonic() + timeout_s
        lost: list[str] = []
        # jobs no GPU has started go back to the queue without losing a try
        for h in list(self._handed.values()):
            if h.phase == JobPhase.ENQUEUED and not h.collecting:
                with contextlib.suppress(*REDIS_DOWN):
                    if h.in_redis and not await self._withdraw(h.lead or h.arq_id):
                        continue
                self._forget(h)
                lost.append(h.job.id)
        if not graceful:
            await self._abort_all()
        if not await self._wait_empty(deadline - time.monotonic()):
            await self._abort_all()
            await self._wait_empty(5.0)
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._bg:
            await asyncio.wait(list(self._bg), timeout=5.0)
        lost.extend(self._handed)
        self._handed.clear()
        self._by_arq.clear()
        self._unregister_metrics()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose(close_connection_pool=True)
            self.redis = None
        return lost

    def free_slots(self) -> int:
        if self._stopping or self.redis is None:
            return 0
        # a batch's members share one arq job and one worker; a GPU about to end its job
        # (``gpu_soon``) is free already, so the next job waits in arq's queue when it frees
        busy = len({h.lead or h.arq_id for h in self._handed.values() if h.phase in _ON_GPU and not h.ending})
        return max(0, len(self._workers) - busy)

    async def execute(self, job: Job) -> None:
        await self.execute_batch([job])

    async def execute_batch(self, jobs: list[Job]) -> None:
        """Hand compatible claimed jobs to one worker for one pipeline call: the first is the arq
        job and carries the others' payloads; each still reports, cancels and re-runs on its own."""
        if self._sink is None or self.redis is None:
            raise RuntimeError("executor not started")
        handed = [h for job in jobs if (h := await self._handed_job(job)) is not None]
        if not handed:
            return
        lead, companions = handed[0], handed[1:]
        if companions:
            lead.payload[BATCH_FIELD] = [{"arq_id": c.arq_id, "payload": c.payload} for c in companions]
            for c in companions:
                c.lead, c.in_redis = lead.arq_id, True
            log.info("jobs %s go to one worker as one batch", ", ".join(h.job.id for h in handed))
        count_batch(len(handed))
        for h in handed:
            if h.job.id in self._handed:
                log.warning("job %s handed over twice; keeping the newer dispatch", h.job.id)
                self._forget(self._handed[h.job.id])
            self._handed[h.job.id] = h
            self._by_arq[h.arq_id] = h.job.id
        await self._enqueue(lead)

    async def _handed_job(self, job: Job) -> HandedJob | None:
        """The job's payload for a worker; None (and the job failed) when its parameters are damaged."""
        from generation.params import request_from_dict

        assert self._sink is not None
        try:
            request = request_from_dict(job.params)
        except (TypeError, ValueError, KeyError) as exc:
            log.error("job %s: stored parameters cannot be read: %s", job.id, exc)
            self._sink.job_finished(job.id, Outcome(state=JobState.FAILED, error=failures.DAMAGED))
            return None
        payload = JobPayload(
            job_id=job.id,
            request=dict(job.params),
            png_metadata=png_metadata(request, job_id=job.id),
            month=job.created_at.strftime("%Y-%m"),
            timeout_s=self.settings.job_timeout_s,
            video_crf=RESULT_CRF,
            unfiltered=job.nsfw_action == NSFW_SPOILER,
            **await _input_picture(request),
        )
        return HandedJob(job=job, arq_id=arq_job_id(job), payload=payload.to_dict())

    async def cancel(self, job_id: str) -> bool:
        h = self._handed.get(job_id)
        if h is None or h.phase == JobPhase.FINISHING or h.collecting:
            return False
        h.cancel = True
        await self._send_cancel(h)
        return True

    def models_loaded(self) -> str:
        """Empty when a worker is live (workers join only once their models are loaded), else why
        not: the /readyz models check."""
        if self._workers:
            return ""
        if self.redis is None or self._stable_since is None:
            return "models not loaded (Redis at QUEUE_URL is unreachable)"
        return "models not loaded (no GPU worker has joined the queue yet)"

    async def _connect(self, *, retries: int) -> None:
        """Open the pool, then what a (re)start needs: old jobs cleared, the stream's end, a sweep."""
        rs = redis_settings(self.settings.queue_url or "")
        rs.conn_retries = retries
        rs.conn_retry_delay = 1
        redis = await create_pool(rs, default_queue_name=self.keys.queue)
        try:
            self.redis = redis
            await self._purge_stale()
            latest = await redis.xrevrange(self.keys.events, count=1)
            if latest:
                self._last_event = as_text(latest[0][0]) or "0-0"
        except BaseException:
            self.redis = None
            with contextlib.suppress(Exception):
                await redis.aclose(close_connection_pool=True)
            raise
        await self._sweep()


async def _input_picture(request: Any) -> dict[str, Any]:
    """The request's input picture as bytes for the payload (a worker cannot read the bot's disk).

    A picture gone from disk travels as nothing: the worker then fails the job politely.
    """
    image = getattr(request, "image", None)
    if image is None:
        return {}
    try:
        data = await asyncio.to_thread(Path(image).read_bytes)
    except OSError:
        log.warning("input picture %s is gone", image)
        return {}
    return {"image_data": data, "image_suffix": Path(image).suffix or ".png"}
