"""One arq worker per GPU: ``python -m generation.worker`` on any machine that can reach Redis.

The process loads its pipelines once at start-up (the same :class:`generation.worker.GPUWorker`
thread the embedded bot uses, so timeouts, the step watchdog and the out-of-memory fallback
behave alike) and then serves arq jobs from the bot's queue. It needs no Discord token: it
returns encoded files, and the bot delivers them.

What arq does for us, unchanged: the queue (a sorted set), unique job ids, one run per job
(``max_tries=1``: a re-run after a lost worker is a new job the bot's queue decides on, with
the attempt counted in its store), ``job_timeout`` as a backstop behind the GPU thread's own
timeout, aborts (the bot's cancel), results with expiry, and its health-check key.

What is added, and why:

- :class:`GatedWorker` takes a job only while this worker's GPU is free. arq's ``max_jobs`` is 2
  so that the PNG/H.264 encoding of job k (on the encode thread) overlaps generating job k+1 on
  the GPU, as in the embedded path; the gate keeps it at one job on the GPU, so a worker never
  sits on a job another idle worker could run, and the bot's fair order holds. It also rides
  out a Redis restart instead of letting arq's poll loop die on a connection error.
- Progress and heartbeats go to the small keys described in :mod:`generation.scaleout`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arq.worker import Worker, func
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from generation import media
from generation.models import build_registry
from generation.params import request_from_dict
from generation.phases import JobPhase
from generation.pipelines import GenerationOutput, PipelineManager, StepInfo
from generation.scaleout import (
    EVENTS_MAXLEN,
    JOB_FUNCTION,
    JobPayload,
    JobReport,
    Keys,
    MediaReport,
    ScaleoutSettings,
    redis_settings,
    write_atomic,
)
from generation.worker import GPUWorker, WorkItem, WorkOutcome

log = logging.getLogger(__name__)

#: errors that mean "Redis is unreachable right now", not "this job is broken"
REDIS_DOWN: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, ConnectionError)
#: jobs arq may hold at once: one on the GPU and one being encoded
MAX_JOBS = 2
#: longest side of a progress preview written to Redis
PREVIEW_MAX_SIDE = 256
DAMAGED = "This request's stored parameters are damaged."


@dataclass
class _Progress:
    step: int = 0
    total: int = 0
    preview: Any = None  # the newest PIL preview not yet written
    seq: int = 0
    last_write: float = -1e9
    writing: bool = False
    dirty: bool = False


class WorkerRuntime:
    """Everything one worker process holds: its GPU thread, identity, and what it reports.

    All methods run on the worker's event loop except the ``_gpu_*`` callbacks, which the GPU
    thread calls and which only hop onto the loop.
    """

    def __init__(
        self,
        *,
        settings: ScaleoutSettings,
        manager_factory: Callable[[], PipelineManager] | None = None,
        preload: tuple[str, ...] | None = None,
    ) -> None:
        self.settings = settings
        self.keys = Keys(settings.queue_name)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.worker_id = f"{settings.worker_name or self.host}:{self.pid}"
        if manager_factory is None:
            registry = build_registry(settings)
            manager_factory = lambda: PipelineManager(settings, registry)  # noqa: E731
            if preload is None:
                preload = tuple(
                    dict.fromkeys(m for m in (settings.image_model, settings.video_model) if m in registry)
                )
        self._factory = manager_factory
        self._preload = preload or ()
        self.redis: Any = None
        self.gpu: GPUWorker | None = None
        self.device = "?"
        self.gpu_name = "?"
        self.jobs_done = 0
        self.started_at = time.time()
        #: arq job id -> phase (RUNNING on the GPU, then ENCODING), for as long as arq holds the job here
        self.jobs: dict[str, JobPhase] = {}
        #: arq job id -> the bot's job id
        self.job_ids: dict[str, str] = {}
        #: arq job ids started for the GPU and not yet done with it (the gate)
        self._gpu_claims: set[str] = set()
        self._done: dict[str, asyncio.Future[WorkOutcome]] = {}
        self._progress: dict[str, _Progress] = {}
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._redis_warned = False

    # -- the gate (called by GatedWorker) ----------------------------------------------------

    def gpu_free(self) -> bool:
        gpu = self.gpu
        return gpu is not None and not self._gpu_claims and not gpu.busy and gpu.wait_ready(0)

    def claim(self, arq_id: str) -> None:
        self._gpu_claims.add(arq_id)

    def release(self, arq_id: str) -> None:
        self._gpu_claims.discard(arq_id)

    def task_ended(self, arq_id: str) -> None:
        """arq is done with the job (result recorded, or given up): stop listing it."""
        self.release(arq_id)
        self.jobs.pop(arq_id, None)
        self.job_ids.pop(arq_id, None)
        self._progress.pop(arq_id, None)
        if self.redis is not None:
            self._spawn(self.beat())  # /info shows the worker idle now, not at the next beat

    # -- arq hooks ---------------------------------------------------------------------------

    async def startup(self, ctx: dict[str, Any]) -> None:
        """Load the pipelines once (on the GPU thread), then announce this worker."""
        self.redis = ctx["redis"]
        self._loop = asyncio.get_running_loop()
        s = self.settings
        self.gpu = GPUWorker(
            manager_factory=self._factory,
            job_timeout_s=s.job_timeout_s,
            step_watchdog_s=s.step_watchdog_s,
            on_start=self._gpu_started,
            on_step=self._gpu_step,
            on_done=self._gpu_done,
            name="gpu",
            preload=self._preload,
        )
        t0 = time.monotonic()
        self.gpu.start()
        await asyncio.to_thread(self.gpu.wait_ready)
        manager = self.gpu.manager
        if manager is None:
            raise RuntimeError("the GPU worker could not load its pipelines (see the log above)")
        info = manager.device_info()
        self.device = str(info.get("device") or "?")
        self.gpu_name = str(info.get("gpu") or self.device)
        await self.beat()
        await self._event("worker_up")
        self._beat_task = asyncio.create_task(self._beat_loop(), name="heartbeat")
        log.info(
            "worker %s ready on %s (%s) in %.1fs; models %s; queue %s",
            self.worker_id,
            self.device,
            self.gpu_name,
            time.monotonic() - t0,
            ", ".join(manager.loaded_models()) or "none",
            self.keys.queue,
        )

    async def shutdown(self, ctx: dict[str, Any]) -> None:
        if self._beat_task is not None:
            self._beat_task.cancel()
            await asyncio.gather(self._beat_task, return_exceptions=True)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.keys.worker(self.worker_id))
                pipe.srem(self.keys.workers, self.worker_id)
                await pipe.execute()
            await self._event("worker_down")
        except REDIS_DOWN:
            log.warning("could not unregister worker %s: Redis unreachable", self.worker_id)
        if self.gpu is not None:
            await asyncio.to_thread(self.gpu.close, 10.0)
        self._encoder.shutdown(wait=True)
        log.info("worker %s stopped after %d jobs", self.worker_id, self.jobs_done)

    async def after_job_end(self, ctx: dict[str, Any]) -> None:
        """arq has recorded the result: tell the bot to collect it now."""
        self.jobs_done += 1
        await self._event("done", job=ctx["job_id"])

    # -- the job -----------------------------------------------------------------------------

    async def run(self, arq_id: str, raw: dict[str, Any]) -> dict[str, Any]:
        """Generate on the GPU thread, then encode on the encode thread; returns a JobReport dict.

        An abort (the bot's cancel) arrives as CancelledError: the GPU thread stops at its next
        step and the report says "cancelled". The GPU is released as soon as it is done, so the
        next job can start while this one is still being encoded.
        """
        gpu = self.gpu
        assert gpu is not None and self._loop is not None
        try:
            payload = JobPayload.from_dict(raw)
            request = request_from_dict(payload.request)
        except (TypeError, ValueError, KeyError) as exc:
            self.release(arq_id)
            log.error("job %s: payload cannot be read: %s", arq_id, exc)
            return JobReport(status="failed", worker_id=self.worker_id, error=DAMAGED).to_dict()
        self.jobs[arq_id] = JobPhase.RUNNING
        self.job_ids[arq_id] = payload.job_id
        await self._safe(self.beat())  # the bot sees at once who holds the job
        done: asyncio.Future[WorkOutcome] = self._loop.create_future()
        self._done[arq_id] = done
        try:
            gpu.submit(WorkItem(job_id=arq_id, request=request, timeout_s=payload.timeout_s))
        except Exception:
            self._done.pop(arq_id, None)
            self.release(arq_id)
            log.exception("job %s: the GPU thread refused it", arq_id)
            error = f"The worker could not take job {payload.job_id}."
            return JobReport(status="failed", worker_id=self.worker_id, error=error).to_dict()
        outcome = await self._wait_gpu(arq_id, done)
        self.release(arq_id)
        self.jobs[arq_id] = JobPhase.ENCODING
        await self._safe(self._event("gpu_done", job=arq_id))
        self._spawn(self.beat())
        report = JobReport(
            status=outcome.status,
            worker_id=self.worker_id,
            error=outcome.error,
            gpu_seconds=round(outcome.gpu_seconds, 4),
            load_s=round(outcome.load_s, 4),
            oom_retries=outcome.oom_retries,
            memory_modes=list(outcome.memory_modes),
        )
        if outcome.status != "complete" or outcome.output is None:
            if outcome.exception is not None and outcome.status == "failed":
                log.warning("job %s failed: %s", payload.job_id, outcome.exception)
            return report.to_dict()
        t0 = time.monotonic()
        try:
            found = await self._loop.run_in_executor(self._encoder, self._encode, payload, outcome.output)
        except Exception:
            log.exception("job %s: encoding the result failed", payload.job_id)
            error = (
                f"The result could not be saved (job {payload.job_id}); the admins can find it in the log."
            )
            return {**report.to_dict(), "status": "failed", "error": error}
        return {**report.to_dict(), "encode_s": round(time.monotonic() - t0, 4), "media": found.to_dict()}

    async def _wait_gpu(self, arq_id: str, done: asyncio.Future[WorkOutcome]) -> WorkOutcome:
        """The GPU thread's outcome; a cancel (abort, shutdown) stops it at the next step first."""
        cancelled = False
        while True:
            try:
                outcome = await asyncio.shield(done)
                break
            except asyncio.CancelledError:
                if not cancelled and self.gpu is not None:
                    log.info("job %s: cancel received, stopping at the next step", arq_id)
                    self.gpu.cancel(arq_id)
                cancelled = True
        self._done.pop(arq_id, None)
        if cancelled:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        return outcome

    def _encode(self, payload: JobPayload, output: GenerationOutput) -> MediaReport:
        """Blocking: PNG or H.264 MP4 (+ poster) exactly as the embedded path writes them."""
        request = output.request
        poster: bytes | None = None
        if output.frames:
            frames = output.frames
            height, width = frames[0].shape[:2]
            fps = int(getattr(request, "fps", 8) or 8)
            data = media.encode_mp4(
                frames, fps=fps, crf=payload.video_crf, preset=payload.video_preset, scale=1
            )
            poster = media.poster_frame(frames)
            suffix, media_type, n_frames = ".mp4", "video/mp4", len(frames)
        else:
            if not output.images:
                raise ValueError("the generation produced neither frames nor images")
            image = output.images[0]
            data = media.encode_png(image, payload.png_metadata)
            width, height, fps = image.width, image.height, None
            suffix, media_type, n_frames = ".png", "image/png", 1
        report = MediaReport(
            media_type=media_type,
            suffix=suffix,
            size_bytes=len(data),
            width=int(width),
            height=int(height),
            frames=n_frames,
            fps=fps,
        )
        if not self._to_shared_storage(len(data)):
            return MediaReport(**{**report.to_dict(), "data": data, "poster": poster})
        folder = Path(self.settings.shared_results_dir or ".") / (payload.month or "unsorted")
        path = folder / f"{payload.job_id}{suffix}"
        poster_path = folder / f"{payload.job_id}.poster.jpg" if poster is not None else None
        if poster is not None and poster_path is not None:
            write_atomic(poster_path, poster)
        write_atomic(path, data)
        where = {"path": str(path), "poster_path": str(poster_path) if poster_path else None}
        return MediaReport(**{**report.to_dict(), **where})

    def _to_shared_storage(self, size: int) -> bool:
        s = self.settings
        if s.shared_results_dir is None or s.result_transfer == "bytes":
            return False
        return s.result_transfer == "path" or size > s.result_inline_max_bytes

    # -- GPU thread callbacks: hop onto the loop, nothing else -------------------------------

    def _call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the process is exiting
            log.debug("worker loop closed; dropping a GPU callback")

    def _gpu_started(self, arq_id: str) -> None:
        self._call_soon(self._on_started, arq_id)

    def _gpu_step(self, arq_id: str, info: StepInfo) -> None:
        self._call_soon(self._on_step, arq_id, info)

    def _gpu_done(self, outcome: WorkOutcome) -> None:
        self._call_soon(self._on_gpu_done, outcome)

    # -- on the loop -------------------------------------------------------------------------

    def _on_started(self, arq_id: str) -> None:
        self._spawn(self._report_started(arq_id))

    async def _report_started(self, arq_id: str) -> None:
        key = self.keys.run(arq_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping={"worker": self.worker_id, "started": f"{time.time():.3f}"})
            pipe.pexpire(key, int(self.settings.result_keep_s * 1000))
            await pipe.execute()
        await self._event("started", job=arq_id)

    def _on_step(self, arq_id: str, info: StepInfo) -> None:
        if arq_id not in self.jobs:
            return
        p = self._progress.setdefault(arq_id, _Progress())
        p.step, p.total = info.step, info.total
        if info.preview is not None:
            p.preview = info.preview
        if p.writing:
            p.dirty = True
            return
        due = time.monotonic() - p.last_write >= self.settings.worker_progress_interval_s
        if due or info.step >= info.total:
            self._spawn(self._write_progress(arq_id, p))

    async def _write_progress(self, arq_id: str, p: _Progress) -> None:
        p.writing = True
        try:
            while True:
                p.dirty = False
                p.last_write = time.monotonic()
                fields: dict[str, Any] = {"step": p.step, "total": p.total}
                image, p.preview = p.preview, None
                if image is not None:
                    fields["preview"] = await asyncio.to_thread(_preview_png, image)
                    p.seq += 1
                    fields["pseq"] = p.seq
                key = self.keys.run(arq_id)
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.hset(key, mapping=fields)
                    pipe.pexpire(key, int(self.settings.result_keep_s * 1000))
                    await pipe.execute()
                if not (p.dirty and p.step >= p.total):  # the last step is always written
                    return
        finally:
            p.writing = False

    def _on_gpu_done(self, outcome: WorkOutcome) -> None:
        self.release(outcome.job_id)
        done = self._done.get(outcome.job_id)
        if done is not None and not done.done():
            done.set_result(outcome)
        else:
            log.warning("job %s: GPU outcome nobody waits for (%s)", outcome.job_id, outcome.status)

    # -- heartbeat and events ----------------------------------------------------------------

    async def beat(self) -> None:
        gpu = self.gpu
        manager = gpu.manager if gpu is not None else None
        running = gpu.current_job_id if gpu is not None else None
        fields = {
            "id": self.worker_id,
            "host": self.host,
            "pid": self.pid,
            "device": self.device,
            "gpu": self.gpu_name,
            "busy": int(bool(gpu is not None and gpu.busy)),
            "job": self.job_ids.get(running or "", ""),
            "jobs": ",".join(self.jobs),
            "jobs_done": self.jobs_done,
            "restarts": gpu.restarts if gpu is not None else 0,
            "models": ",".join(manager.loaded_models()) if manager is not None else "",
            "started_at": f"{self.started_at:.3f}",
            "beat_at": f"{time.time():.3f}",
        }
        key = self.keys.worker(self.worker_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=fields)
            pipe.pexpire(key, int(self.settings.heartbeat_ttl_s * 1000))
            pipe.sadd(self.keys.workers, self.worker_id)
            await pipe.execute()

    async def _beat_loop(self) -> None:
        while True:
            try:
                await self.beat()
                if self._redis_warned:
                    log.info("worker %s: Redis reachable again", self.worker_id)
                    self._redis_warned = False
            except asyncio.CancelledError:
                raise
            except REDIS_DOWN as exc:
                if not self._redis_warned:
                    log.warning("worker %s: heartbeat failed, Redis unreachable (%s)", self.worker_id, exc)
                    self._redis_warned = True
            except Exception:
                log.exception("worker %s: heartbeat failed", self.worker_id)
            await asyncio.sleep(self.settings.heartbeat_every_s)

    async def _event(self, kind: str, *, job: str = "") -> None:
        await self.redis.xadd(
            self.keys.events,
            {"type": kind, "job": job, "worker": self.worker_id},
            maxlen=EVENTS_MAXLEN,
            approximate=True,
        )

    async def _safe(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Reports are best effort: the bot re-checks arq's keys if one is lost."""
        try:
            await coro
        except REDIS_DOWN as exc:
            log.warning("worker %s: a report to Redis was lost (%s)", self.worker_id, exc)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(self._safe(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class GatedWorker(Worker):
    """arq's Worker, taking a job only while the GPU is free, and riding out Redis restarts.

    arq reads up to ``queue_read_limit`` ids per poll and would start as many as ``max_jobs``
    allows; here each poll starts at most one, and only when :meth:`WorkerRuntime.gpu_free`.
    Ids of jobs running on other workers stay in arq's queue until they finish, so the ids are
    tried in order until one starts.
    """

    def __init__(self, *args: Any, runtime: WorkerRuntime, **kwargs: Any) -> None:
        self.runtime = runtime
        self._redis_down = False
        super().__init__(*args, **kwargs)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        for job_id_b in job_ids:
            if not self.allow_pick_jobs or not self.runtime.gpu_free():
                return
            job_id = job_id_b.decode()
            before_task = self.tasks.get(job_id)
            before_count = self.job_counter
            try:
                await super().start_jobs([job_id_b])
            except REDIS_DOWN:
                task = self.tasks.get(job_id)
                if self.job_counter > before_count and (task is None or task is before_task):
                    # arq counted the job but never started it: give the slot back
                    self.job_counter -= 1
                    self.sem.release()
                raise
            task = self.tasks.get(job_id)
            if task is not None and task is not before_task:
                self.runtime.claim(job_id)
                task.add_done_callback(lambda _t, j=job_id: self.runtime.task_ended(j))
                return

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except REDIS_DOWN as exc:
            if not self._redis_down:
                log.warning("Redis unreachable (%s); the worker keeps its models and retries", exc)
                self._redis_down = True
            await asyncio.sleep(min(1.0, self.runtime.settings.heartbeat_every_s))
            return
        if self._redis_down:
            log.info("Redis reachable again; taking jobs")
            self._redis_down = False


async def generate(ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """The arq job function: one generation request, returned as an encoded file."""
    runtime: WorkerRuntime = ctx["runtime"]
    return await runtime.run(ctx["job_id"], payload)


class WorkerSettings:
    """arq's settings for our worker, as a class (arq's convention); :func:`build_worker` adds
    what comes from :class:`ScaleoutSettings` (Redis, queue name, timeouts, health checks)."""

    max_jobs = MAX_JOBS
    max_tries = 1
    allow_abort_jobs = True
    retry_jobs = True


def build_worker(settings: ScaleoutSettings, *, runtime: WorkerRuntime | None = None) -> GatedWorker:
    """The arq worker for `settings` (call inside the event loop that will run it, or before
    `run()`; arq binds to the current loop)."""
    if not settings.queue_url:
        raise ValueError("QUEUE_URL is not set: the worker needs the Redis URL the bot uses")
    runtime = runtime or WorkerRuntime(settings=settings)
    keys = runtime.keys
    # the GPU thread stops a job at job_timeout_s; arq's timeout is only the backstop behind it
    backstop_s = settings.job_timeout_s + settings.step_watchdog_s + 60.0
    function = func(
        generate,
        name=JOB_FUNCTION,
        timeout=backstop_s,
        max_tries=WorkerSettings.max_tries,
        keep_result=settings.result_keep_s,
    )
    return GatedWorker(
        functions=[function],
        runtime=runtime,
        queue_name=keys.queue,
        redis_settings=redis_settings(settings.queue_url),
        on_startup=runtime.startup,
        on_shutdown=runtime.shutdown,
        after_job_end=runtime.after_job_end,
        max_jobs=WorkerSettings.max_jobs,
        job_timeout=backstop_s,
        keep_result=settings.result_keep_s,
        poll_delay=settings.worker_poll_delay_s,
        max_tries=WorkerSettings.max_tries,
        health_check_interval=settings.worker_health_check_s,
        health_check_key=keys.arq_health(runtime.worker_id),
        allow_abort_jobs=WorkerSettings.allow_abort_jobs,
        retry_jobs=WorkerSettings.retry_jobs,
        # SIGTERM: take no new job, let the running one finish (up to its own time limit)
        job_completion_wait=int(settings.job_timeout_s),
        ctx={"runtime": runtime},
    )


def _preview_png(image: Any) -> bytes:
    image = image.convert("RGB")
    if max(image.size) > PREVIEW_MAX_SIDE:
        image = image.copy()
        image.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    """``python -m generation.worker``: run one arq worker (one GPU) until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m generation.worker",
        description="Run one GPU worker for the bot's queue on Redis (QUEUE_URL). "
        "Every other knob comes from the environment or .env, as for the bot.",
    )
    parser.add_argument("--queue-url", help="Redis URL (overrides QUEUE_URL)")
    parser.add_argument("--name", help="worker name shown in /info (overrides WORKER_NAME)")
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides: dict[str, Any] = {}
    if args.queue_url:
        overrides["queue_url"] = args.queue_url
    if args.name:
        overrides["worker_name"] = args.name
    settings = ScaleoutSettings(**overrides)
    if not settings.queue_url:
        log.error("QUEUE_URL is not set: give the Redis URL the bot uses (e.g. redis://host:6379/0)")
        return 2
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        build_worker(settings).run()
    finally:
        loop.close()
    return 0


if __name__ == "__main__":  # pragma: no cover - `python -m generation.worker` is the entry point
    sys.exit(main())
