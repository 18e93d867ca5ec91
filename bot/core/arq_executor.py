"""The distributed executor: arq workers on Redis behind the queue's executor seam.

With ``QUEUE_URL=redis://…`` the bot's :class:`bot.core.queue.JobQueue` keeps deciding who goes next
(fairness, quotas, positions, ETA, attempts, all in the store) and this executor only carries the
chosen job to a worker. arq's own queue stays shallow: :meth:`ArqExecutor.free_slots` is the
number of live workers minus the jobs already waiting for or running on a GPU, so a job enters
arq only when a GPU is there to take it, and a burst from one member never jumps the fair order.

The life of a job here, with what arq does in brackets:

1. :meth:`execute` enqueues it under an id made of the job id, its attempt and its claim time
   [``enqueue_job(_job_id=…)``: enqueueing the same dispatch twice is a no-op];
2. a worker with a free GPU picks it and reports ``started`` / ``gpu_done`` / ``done`` on the
   event stream; progress is read from its run hash every ``PROGRESS_EDIT_INTERVAL_S``;
3. the result [arq's result key, kept ``RESULT_KEEP_S``] holds the encoded file as bytes, or a
   path on shared storage; the bot writes the bytes under ``RESULTS_DIR`` off the event loop;
4. cancel [``Job.abort``] stops it at the next step; a job no worker has started yet is simply
   taken back from arq's queue.

Nothing here trusts one signal alone. Every ``sweep_s`` the executor re-reads the workers'
heartbeats and arq's keys of every job it handed over, so that:

- a worker that vanished (no heartbeat for ``heartbeat_ttl_s``) is noticed within
  ``WORKER_HEALTH_CHECK_S``; its job is taken back from arq and reported as
  ``Outcome(retryable=True)``, and the queue re-runs it once on another worker, with the
  attempt counted in the store;
- a job Redis forgot (a restart without persistence) is enqueued again under the same id, unless
  a live worker says it is still running it; verdicts wait until Redis has been reachable (the
  same server run) for a whole health-check interval, so a restart is not mistaken for deaths;
- a result whose ``done`` event was lost is still collected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arq.connections import ArqRedis, create_pool
from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import Job as ArqJob
from arq.jobs import JobResult as ArqResult
from arq.jobs import SerializationError
from arq.worker import JobExecutionFailed
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from bot.core.executor import ExecutionSink, Outcome, PreviewFn, WorkerInfo, call_sink, count_oom_retries
from bot.core.jobs import Job, JobState
from bot.core.results import JobResult, ResultWriter, png_metadata
from generation.phases import JobPhase
from generation.scaleout import (
    JOB_FUNCTION,
    JobPayload,
    JobReport,
    Keys,
    MediaReport,
    decode_hash,
    redis_settings,
    write_atomic,
)

if TYPE_CHECKING:
    from bot.settings import Settings

log = logging.getLogger(__name__)

REDIS_DOWN: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
)
LOST = "The GPU worker running this job stopped, and it could not be finished elsewhere. Please try again."
CRASHED = "Something went wrong while generating (job {job_id}); the admins can find it in the log."
#: while Redis is unreachable, how long the loops wait before trying again
RECONNECT_S = 0.5
#: how long start() waits for Redis before leaving it to the monitor loop
START_CONNECT_S = 3.0


@dataclass
class _Handed:
    """A job this executor handed to arq and has not reported finished yet."""

    job: Job
    arq_id: str
    payload: dict[str, Any]
    #: ENQUEUED (waiting for a GPU) | RUNNING (on a GPU) | FINISHING (encoding, transfer)
    phase: JobPhase = JobPhase.ENQUEUED
    in_redis: bool = False
    worker: str | None = None
    started_reported: bool = False
    collecting: bool = False
    #: when the sweep first found it neither queued, held by a live worker, nor finished
    bad_since: float | None = None
    cancel: bool = False
    cancel_sent: bool = False
    step: int = -1
    pseq: str = ""
    handed_mono: float = field(default_factory=time.monotonic)


def arq_job_id(job: Job) -> str:
    """One id per dispatch: re-enqueueing the same dispatch is a no-op, a retry is a new job."""
    started = job.started_at.timestamp() if job.started_at is not None else time.time()
    return f"{job.id}.{job.attempts}.{int(started * 1000)}"


class ArqExecutor:
    """Runs the queue's jobs on arq workers; see the module docstring."""

    name = "arq"

    def __init__(self, *, settings: Settings, results: ResultWriter | None = None) -> None:
        if not settings.queue_url:
            raise ValueError("ArqExecutor needs QUEUE_URL (redis://host:port/db)")
        self.settings = settings
        self.keys = Keys(settings.queue_name)
        self.results = results or ResultWriter(results_dir=settings.results_dir)
        self.redis: ArqRedis | None = None
        self._sink: ExecutionSink | None = None
        self._handed: dict[str, _Handed] = {}  # bot job id ->
        self._by_arq: dict[str, str] = {}  # arq job id -> bot job id
        self._workers: dict[str, dict[str, Any]] = {}  # live worker id -> its heartbeat
        self._stopping = False
        self._loops: list[asyncio.Task[None]] = []
        self._bg: set[asyncio.Task[Any]] = set()
        self._sweep_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._run_id: str | None = None
        self._stable_since: float | None = None
        self._last_event = "0-0"
        self._redis_warned = False
        self._collector: Any = None
        #: workers declared lost since start (for /metrics and the tests)
        self.workers_lost = 0
        #: jobs put back into arq after Redis forgot them
        self.reenqueued = 0

    # -- Executor ----------------------------------------------------------------------------

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
        # jobs no GPU has started go back to the bot's fair queue without losing a try
        for h in list(self._handed.values()):
            if h.phase == JobPhase.ENQUEUED and not h.collecting:
                with contextlib.suppress(*REDIS_DOWN):
                    if h.in_redis and not await self._withdraw(h.arq_id):
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
        busy = sum(1 for h in self._handed.values() if h.phase in (JobPhase.ENQUEUED, JobPhase.RUNNING))
        return max(0, len(self._workers) - busy)

    async def execute(self, job: Job) -> None:
        from generation.params import request_from_dict

        if self._sink is None or self.redis is None:
            raise RuntimeError("executor not started")
        try:
            request = request_from_dict(job.params)
        except (TypeError, ValueError, KeyError) as exc:
            log.error("job %s: stored parameters cannot be read: %s", job.id, exc)
            self._sink.job_finished(
                job.id, Outcome(state=JobState.FAILED, error="This request's stored parameters are damaged.")
            )
            return
        payload = JobPayload(
            job_id=job.id,
            request=dict(job.params),
            png_metadata=png_metadata(job, request),
            month=job.created_at.strftime("%Y-%m"),
            timeout_s=self.settings.job_timeout_s,
            video_crf=self.results.video_crf,
            video_preset=self.results.video_preset,
        )
        h = _Handed(job=job, arq_id=arq_job_id(job), payload=payload.to_dict())
        if job.id in self._handed:
            log.warning("job %s handed over twice; keeping the newer dispatch", job.id)
            self._forget(self._handed[job.id])
        self._handed[job.id] = h
        self._by_arq[h.arq_id] = job.id
        await self._enqueue(h)

    async def cancel(self, job_id: str) -> bool:
        h = self._handed.get(job_id)
        if h is None or h.phase == JobPhase.FINISHING or h.collecting:
            return False
        h.cancel = True
        await self._send_cancel(h)
        return True

    def workers(self) -> list[WorkerInfo]:
        return [_worker_info(w) for w in self._workers.values()]

    def models_loaded(self) -> str:
        """Empty when a worker is live (workers join only once their models are loaded), else why
        not: the /readyz models check."""
        if self._workers:
            return ""
        if self.redis is None or self._stable_since is None:
            return "models not loaded (Redis at QUEUE_URL is unreachable)"
        return "models not loaded (no GPU worker has joined the queue yet)"

    # -- handing over ------------------------------------------------------------------------

    async def _enqueue(self, h: _Handed) -> None:
        """Put the job in arq's queue; if Redis is down, the monitor tries again."""
        try:
            await self._redis().enqueue_job(
                JOB_FUNCTION, h.payload, _job_id=h.arq_id, _queue_name=self.keys.queue
            )
        except (*REDIS_DOWN, WatchError) as exc:
            log.warning("job %s: could not reach Redis to hand it over (%s); retrying", h.job.id, exc)
            return
        # None from enqueue_job means the same dispatch is already there (or finished): fine
        h.in_redis = True

    async def _send_cancel(self, h: _Handed) -> None:
        try:
            if not h.in_redis or (h.phase == JobPhase.ENQUEUED and await self._withdraw(h.arq_id)):
                await self._finish(h, Outcome(state=JobState.CANCELLED, error="Cancelled before it started."))
                return
            job = ArqJob(h.arq_id, self._redis(), _queue_name=self.keys.queue)
            with contextlib.suppress(TimeoutError):
                await job.abort(timeout=0, poll_delay=0)
            h.cancel_sent = True
        except REDIS_DOWN as exc:
            log.warning("job %s: cancel not delivered yet (%s); retrying", h.job.id, exc)

    async def _withdraw(self, arq_id: str) -> bool:
        """Take a job back from arq's queue if no worker started it; False if one did (or it ended)."""
        in_progress = in_progress_key_prefix + arq_id
        result = result_key_prefix + arq_id
        async with self._redis().pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(in_progress, result)
                if await pipe.exists(in_progress, result):
                    return False
                pipe.multi()
                pipe.zrem(self.keys.queue, arq_id)
                pipe.delete(job_key_prefix + arq_id, retry_key_prefix + arq_id)
                await pipe.execute()
            except WatchError:
                return False
        return True

    async def _purge(self, arq_id: str) -> None:
        """Forget a dispatch in Redis for good (its worker is gone): arq must never run it again."""
        async with self._redis().pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.queue, arq_id)
            pipe.delete(
                job_key_prefix + arq_id,
                in_progress_key_prefix + arq_id,
                retry_key_prefix + arq_id,
                self.keys.run(arq_id),
            )
            await pipe.execute()

    async def _purge_stale(self) -> None:
        """Jobs a previous bot process left in arq's queue: the bot's queue re-runs them from the
        store under new ids, so take back those not started and abort those running."""
        redis = self._redis()
        ids = [_text(i) for i in await redis.zrange(self.keys.queue, 0, -1)]
        taken = aborted = 0
        for arq_id in ids:
            if await self._withdraw(arq_id):
                taken += 1
            elif await redis.exists(in_progress_key_prefix + arq_id):
                await redis.zadd(abort_jobs_ss, {arq_id: int(time.time() * 1000)})
                aborted += 1
        if taken or aborted:
            log.warning(
                "arq queue %s held %d job(s) from a previous bot process: took back %d, aborted %d",
                self.keys.queue,
                len(ids),
                taken,
                aborted,
            )

    async def _abort_all(self) -> None:
        for h in list(self._handed.values()):
            if h.phase != JobPhase.FINISHING and not h.collecting and not h.cancel_sent:
                await self._send_cancel(h)

    async def _wait_empty(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + max(0.0, timeout_s)
        while self._handed:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(left, 0.5))
        return True

    # -- hearing back ------------------------------------------------------------------------

    async def _event_loop(self) -> None:
        while True:
            if self.redis is None:
                await asyncio.sleep(RECONNECT_S)
                continue
            try:
                found = await self._redis().xread({self.keys.events: self._last_event}, count=200, block=1000)
            except asyncio.CancelledError:
                raise
            except REDIS_DOWN as exc:
                self._redis_trouble(exc)
                await asyncio.sleep(RECONNECT_S)
                continue
            except Exception:
                log.exception("reading worker events failed")
                await asyncio.sleep(RECONNECT_S)
                continue
            for _stream, entries in found or []:
                for entry_id, raw in entries:
                    self._last_event = _text(entry_id)
                    try:
                        self._on_event(decode_hash(raw))
                    except Exception:
                        log.exception("worker event %r could not be handled", raw)

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind in ("worker_up", "worker_down"):
            self._spawn(self._sweep(), name="arq-sweep")
            return
        job_id = self._by_arq.get(str(event.get("job") or ""))
        h = self._handed.get(job_id) if job_id else None
        if h is None:
            return
        worker = str(event.get("worker") or "") or None
        if kind == "started":
            self._mark_running(h, worker)
        elif kind == "gpu_done":
            self._mark_finishing(h, worker)
        elif kind == "done":
            self._spawn(self._collect(h), name=f"arq-collect-{h.job.id[:8]}")

    def _mark_running(self, h: _Handed, worker: str | None) -> None:
        if worker:
            h.worker = worker
        if h.phase == JobPhase.ENQUEUED:
            h.phase = JobPhase.RUNNING
        if not h.started_reported:
            h.started_reported = True
            call_sink(self._sink, "job_started", h.job.id, worker_id=h.worker or "?")

    def _mark_finishing(self, h: _Handed, worker: str | None) -> None:
        if h.phase == JobPhase.FINISHING:
            return
        self._mark_running(h, worker)
        h.phase = JobPhase.FINISHING
        call_sink(self._sink, "job_gpu_done", h.job.id)
        call_sink(self._sink, "slot_free")

    async def _collect(self, h: _Handed) -> None:
        if h.collecting or self._handed.get(h.job.id) is not h:
            return
        h.collecting = True
        try:
            info = await ArqJob(h.arq_id, self._redis(), _queue_name=self.keys.queue).result_info()
        except REDIS_DOWN as exc:
            h.collecting = False
            self._redis_trouble(exc)
            return
        except SerializationError:
            log.exception("job %s: the worker's result cannot be read", h.job.id)
            await self._finish(h, Outcome(state=JobState.FAILED, error=CRASHED.format(job_id=h.job.id)))
            return
        if info is None:
            h.collecting = False
            return
        outcome = await self._outcome(h, info)
        if outcome.state is JobState.COMPLETE:
            self._mark_finishing(h, outcome.worker_id)
        await self._finish(h, outcome)
        with contextlib.suppress(*REDIS_DOWN):
            await self._redis().delete(result_key_prefix + h.arq_id, self.keys.run(h.arq_id))

    async def _outcome(self, h: _Handed, info: ArqResult) -> Outcome:
        job, value = h.job, info.result
        if not info.success or not isinstance(value, dict):
            if isinstance(value, asyncio.CancelledError):
                return Outcome(state=JobState.CANCELLED, error="Cancelled.")
            if isinstance(value, JobExecutionFailed):
                # arq gave up on this dispatch without running it to an end (its worker stopped
                # mid-job, or the job expired): the queue decides on a new try
                log.warning("job %s: arq gave up on it (%s)", job.id, value)
                return Outcome(state=JobState.FAILED, retryable=True, error=LOST)
            if isinstance(value, TimeoutError):
                limit = self.settings.job_timeout_s
                error = f"The job ran past the {limit:g} s time limit and was stopped."
                return Outcome(state=JobState.FAILED, error=error)
            log.error("job %s failed on its worker: %r", job.id, value)
            return Outcome(state=JobState.FAILED, error=CRASHED.format(job_id=job.id))
        report = JobReport.from_dict(value)
        timings = {"load_s": report.load_s, "generate_s": report.gpu_seconds, "encode_s": report.encode_s}
        if report.oom_retries:
            timings["oom_retries"] = float(report.oom_retries)
            count_oom_retries(job.model, report.oom_retries)
        common: dict[str, Any] = {
            "gpu_seconds": report.gpu_seconds,
            "timings": timings,
            "worker_id": report.worker_id,
        }
        if report.status == "complete" and report.media:
            t0 = time.monotonic()
            try:
                result = await asyncio.to_thread(self._store_media, job, MediaReport.from_dict(report.media))
            except Exception as exc:
                log.error("job %s: its result could not be stored: %s", job.id, exc)
                error = f"The result could not be saved (job {job.id}); the admins can find it in the log."
                return Outcome(state=JobState.FAILED, error=error, **common)
            timings["transfer_s"] = time.monotonic() - t0
            return Outcome(state=JobState.COMPLETE, result=result, **common)
        state = JobState.CANCELLED if report.status == "cancelled" else JobState.FAILED
        return Outcome(state=state, error=report.error or CRASHED.format(job_id=job.id), **common)

    def _store_media(self, job: Job, found: MediaReport) -> JobResult:
        """Blocking (a thread): write inline bytes under RESULTS_DIR, or check the shared path."""
        poster_path: str | None = None
        if found.data is not None:
            path = self.results.path_for(job, found.suffix)
            if found.poster is not None:
                poster = self.results.path_for(job, ".poster.jpg")
                write_atomic(poster, found.poster)
                poster_path = str(poster)
            write_atomic(path, found.data)
            size = len(found.data)
        elif found.path:
            path = Path(found.path)
            try:
                size = path.stat().st_size
            except OSError as exc:
                raise FileNotFoundError(
                    f"{path} is not readable here; SHARED_RESULTS_DIR must be mounted at the same path "
                    "on the bot and on every worker"
                ) from exc
            if found.poster_path and Path(found.poster_path).exists():
                poster_path = found.poster_path
        else:
            raise ValueError("the worker's report has neither bytes nor a path")
        return JobResult(
            path=str(path),
            media_type=found.media_type,
            size_bytes=size,
            poster_path=poster_path,
            width=found.width,
            height=found.height,
            frames=found.frames,
            fps=found.fps,
        )

    async def _finish(self, h: _Handed, outcome: Outcome) -> None:
        """Report a handed job's end exactly once."""
        if self._handed.get(h.job.id) is not h:
            return
        self._forget(h)
        call_sink(self._sink, "job_finished", h.job.id, outcome)
        call_sink(self._sink, "slot_free")

    def _forget(self, h: _Handed) -> None:
        if self._handed.get(h.job.id) is h:
            del self._handed[h.job.id]
        self._by_arq.pop(h.arq_id, None)
        self._changed.set()

    # -- the sweep: workers, lost workers, lost jobs ----------------------------------------

    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_s)
            try:
                if self.redis is None:
                    await self._connect(retries=0)
                await self._sweep()
            except asyncio.CancelledError:
                raise
            except REDIS_DOWN as exc:
                self._redis_trouble(exc)
            except Exception:
                log.exception("arq executor sweep failed")

    async def _sweep(self) -> None:
        if self._sweep_lock.locked():
            return
        async with self._sweep_lock:
            await self._sweep_once()

    async def _sweep_once(self) -> None:
        redis = self._redis()
        now = time.monotonic()
        server = await redis.info("server")
        run_id = str(server.get("run_id") or "")
        if run_id != self._run_id:
            if self._run_id is not None:
                log.warning("Redis restarted (new server run); checking every handed job against it")
            self._run_id = run_id
            self._stable_since = now
            for h in self._handed.values():
                h.bad_since = None
        if self._stable_since is None:
            self._stable_since = now
        if self._redis_warned:
            log.info("Redis reachable again")
            self._redis_warned = False
        stable = now - self._stable_since >= self.settings.worker_health_check_s
        await self._read_workers(redis)
        holders = {
            arq_id: wid
            for wid, beat in self._workers.items()
            for arq_id in str(beat.get("jobs") or "").split(",")
            if arq_id
        }
        handed = [h for h in self._handed.values() if not h.collecting]
        if not handed:
            return
        async with redis.pipeline(transaction=False) as pipe:
            for h in handed:
                pipe.exists(job_key_prefix + h.arq_id)
                pipe.exists(result_key_prefix + h.arq_id)
                pipe.exists(in_progress_key_prefix + h.arq_id)
                pipe.hget(self.keys.run(h.arq_id), "worker")
            answers = await pipe.execute()
        for i, h in enumerate(handed):
            queued, finished, in_progress, ran_on = answers[4 * i : 4 * i + 4]
            await self._check(
                h, bool(queued), bool(finished), bool(in_progress), _text(ran_on), holders, stable
            )

    async def _check(
        self,
        h: _Handed,
        queued: bool,
        finished: bool,
        in_progress: bool,
        ran_on: str | None,
        holders: dict[str, str],
        stable: bool,
    ) -> None:
        if self._handed.get(h.job.id) is not h or h.collecting:
            return
        if finished:
            self._spawn(self._collect(h), name=f"arq-collect-{h.job.id[:8]}")
            return
        if not h.in_redis:
            await self._enqueue(h)
            return
        if h.cancel and not h.cancel_sent:
            await self._send_cancel(h)
        holder = holders.get(h.arq_id)
        if holder is not None:
            h.bad_since = None
            if ran_on:  # a missed "started" event
                self._mark_running(h, ran_on)
            return
        worker = h.worker or ran_on
        if worker is not None and worker not in self._workers:
            if stable:
                await self._worker_lost(h, worker)
            return
        if queued and not in_progress:
            h.bad_since = None  # waiting in arq's queue for a free GPU
            return
        now = time.monotonic()
        if h.bad_since is None:
            h.bad_since = now
        if not stable or now - h.bad_since < self.settings.heartbeat_ttl_s:
            return
        if in_progress:
            # a worker took it but no live worker holds it: that worker is gone
            await self._worker_lost(h, worker or "unknown")
            return
        # Redis forgot the job and nobody is running it: the same dispatch goes back into arq
        log.warning("job %s: no longer in Redis (a restart?); handing it over again", h.job.id)
        self.reenqueued += 1
        h.bad_since = None
        if h.phase != JobPhase.ENQUEUED:
            h.phase = JobPhase.ENQUEUED
        await self._enqueue(h)

    async def _worker_lost(self, h: _Handed, worker: str) -> None:
        log.warning(
            "job %s: worker %s stopped (no heartbeat for %.1fs); the queue re-runs the job",
            h.job.id,
            worker,
            self.settings.heartbeat_ttl_s,
        )
        with contextlib.suppress(*REDIS_DOWN):
            await self._purge(h.arq_id)
        await self._finish(h, Outcome(state=JobState.FAILED, retryable=True, error=LOST, worker_id=worker))

    async def _read_workers(self, redis: ArqRedis) -> None:
        ids = sorted(_text(i) or "" for i in await redis.smembers(self.keys.workers))
        async with redis.pipeline(transaction=False) as pipe:
            for wid in ids:
                pipe.hgetall(self.keys.worker(wid))
            beats = await pipe.execute()
        live: dict[str, dict[str, Any]] = {}
        gone: list[str] = []
        for wid, raw in zip(ids, beats, strict=True):
            if raw:
                live[wid] = decode_hash(raw)
            else:
                gone.append(wid)
        for wid in gone:
            if wid in self._workers:
                self.workers_lost += 1
                log.warning("worker %s is gone (no heartbeat for %.1fs)", wid, self.settings.heartbeat_ttl_s)
        if gone:
            await redis.srem(self.keys.workers, *gone)
        for wid in live.keys() - self._workers.keys():
            log.info("worker %s joined (%s, %s)", wid, live[wid].get("host"), live[wid].get("gpu"))
        changed = live.keys() != self._workers.keys()
        self._workers = live
        if changed:
            call_sink(self._sink, "slot_free")

    # -- progress ----------------------------------------------------------------------------

    async def _progress_loop(self) -> None:
        period = max(0.1, self.settings.progress_edit_interval_s)
        while True:
            await asyncio.sleep(period)
            try:
                await self._read_progress()
            except asyncio.CancelledError:
                raise
            except REDIS_DOWN as exc:
                self._redis_trouble(exc)
            except Exception:
                log.exception("reading progress failed")

    async def _read_progress(self) -> None:
        running = [h for h in self._handed.values() if h.phase == JobPhase.RUNNING and not h.collecting]
        if not running or self.redis is None:
            return
        redis = self._redis()
        async with redis.pipeline(transaction=False) as pipe:
            for h in running:
                pipe.hmget(self.keys.run(h.arq_id), ["step", "total", "pseq"])
            answers = await pipe.execute()
        for h, (step_b, total_b, pseq_b) in zip(running, answers, strict=True):
            if step_b is None or total_b is None:
                continue
            step, total, pseq = int(step_b), int(total_b), _text(pseq_b) or ""
            preview: PreviewFn | None = None
            if pseq and pseq != h.pseq:
                data = await redis.hget(self.keys.run(h.arq_id), "preview")
                h.pseq = pseq
                if data:
                    preview = lambda png=bytes(data): png  # noqa: E731
            if step != h.step or preview is not None:
                h.step = step
                call_sink(self._sink, "job_progress", h.job.id, step, total, preview)

    # -- plumbing ----------------------------------------------------------------------------

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
                self._last_event = _text(latest[0][0]) or "0-0"
        except BaseException:
            self.redis = None
            with contextlib.suppress(Exception):
                await redis.aclose(close_connection_pool=True)
            raise
        await self._sweep()

    def _redis(self) -> ArqRedis:
        if self.redis is None:
            raise RedisConnectionError("not connected")
        return self.redis

    def _redis_trouble(self, exc: BaseException) -> None:
        self._stable_since = None
        if not self._redis_warned:
            log.warning("Redis unreachable (%s); jobs on the workers keep running, retrying", exc)
            self._redis_warned = True

    def _spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._bg.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._bg.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, REDIS_DOWN):
            self._redis_trouble(exc)
        elif exc is not None:
            log.error("arq executor task %s failed", task.get_name(), exc_info=exc)

    # -- /metrics ----------------------------------------------------------------------------

    def _register_metrics(self) -> None:
        try:
            from bot.core import metrics

            collector = _WorkerCollector(self)
            metrics.REGISTRY.register(collector)
        except Exception:
            log.warning("per-worker metrics not registered", exc_info=True)
            return
        self._collector = collector

    def _unregister_metrics(self) -> None:
        if self._collector is None:
            return
        from bot.core import metrics

        with contextlib.suppress(KeyError):
            metrics.REGISTRY.unregister(self._collector)
        self._collector = None


class _WorkerCollector:
    """Per-worker series, read from the executor at scrape time (never stale)."""

    def __init__(self, executor: ArqExecutor) -> None:
        self.executor = executor

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        workers = self.executor.workers()
        live = GaugeMetricFamily("imagine_workers_live", "GPU workers with a fresh heartbeat.")
        live.add_metric([], len(workers))
        info = GaugeMetricFamily(
            "imagine_worker_info",
            "One series per live worker (value 1).",
            labels=["worker", "host", "device"],
        )
        busy = GaugeMetricFamily(
            "imagine_worker_busy", "1 while the worker's GPU runs a job.", labels=["worker"]
        )
        done = GaugeMetricFamily(
            "imagine_worker_jobs_done", "Jobs the worker finished since it started.", labels=["worker"]
        )
        beat = GaugeMetricFamily(
            "imagine_worker_last_heartbeat_seconds",
            "Unix time of the worker's last heartbeat.",
            labels=["worker"],
        )
        for w in workers:
            info.add_metric([w.id, w.host, w.device], 1)
            busy.add_metric([w.id], 1 if w.busy else 0)
            done.add_metric([w.id], w.jobs_done)
            if w.last_heartbeat is not None:
                beat.add_metric([w.id], w.last_heartbeat.timestamp())
        lost = CounterMetricFamily("imagine_workers_lost", "Workers declared lost (heartbeat expired).")
        lost.add_metric([], self.executor.workers_lost)
        yield from (live, info, busy, done, beat, lost)


def _worker_info(beat: dict[str, Any]) -> WorkerInfo:
    device, gpu = str(beat.get("device") or "?"), str(beat.get("gpu") or "")
    try:
        last = datetime.fromtimestamp(float(beat.get("beat_at") or 0), tz=UTC)
    except (TypeError, ValueError):
        last = None
    return WorkerInfo(
        id=str(beat.get("id") or "?"),
        host=str(beat.get("host") or "?"),
        device=f"{device} ({gpu})" if gpu and gpu != device else device,
        busy=str(beat.get("busy")) == "1",
        job_id=str(beat.get("job") or "") or None,
        jobs_done=_int(beat.get("jobs_done")),
        last_heartbeat=last,
        alive=True,
        restarts=_int(beat.get("restarts")),
    )


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
