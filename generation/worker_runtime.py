"""What one arq worker process holds: its runner (the GPU), its identity, and what it reports.

:mod:`generation.worker` is the process's entry (``python -m generation.worker``) and arq's glue;
this module is the work itself. Each job runs on :class:`generation.runner.Runner`, the same
runner the embedded bot uses, so timeouts, the step watchdog, the out-of-memory fallback and the
encoder behave alike; the finished file goes back through arq's result as bytes, or as a path on
shared storage. Progress, heartbeats and events go to the small keys described in
:mod:`generation.scaleout`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from generation import failures
from generation.files import save_encoded, write_atomic
from generation.gpu_forecast import GpuEndForecast
from generation.media import EncodedMedia, EncodeOptions, preview_png
from generation.models import build_registry
from generation.outputs import StepInfo
from generation.params import GenerationRequest, request_from_dict
from generation.phases import JobPhase
from generation.runner import RunItem, Runner, RunResult
from generation.scaleout import (
    BATCH_FIELD,
    EVENTS_MAXLEN,
    JobPayload,
    JobReport,
    Keys,
    MediaReport,
    ScaleoutSettings,
)
from generation.worker_batch import run_batch

if TYPE_CHECKING:  # loads torch: imported only when no other manager is given
    from generation.pipelines import PipelineManager

log = logging.getLogger(__name__)

#: errors that mean "Redis is unreachable right now", not "this job is broken"
REDIS_DOWN: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, ConnectionError)


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
    """Everything one worker process holds: its runner, identity, and what it reports.

    All methods run on the worker's event loop except the ``_runner_*`` callbacks, which the
    runner's threads call and which only hop onto the loop.
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
            from generation.pipelines import PipelineManager

            registry = build_registry(settings)
            manager_factory = lambda: PipelineManager(settings, registry)  # noqa: E731
            if preload is None:
                preload = tuple(
                    dict.fromkeys(m for m in (settings.image_model, settings.video_model) if m in registry)
                )
        self._factory = manager_factory
        self._preload = preload or ()
        self.redis: Any = None
        self.runner: Runner | None = None
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
        self._done: dict[str, asyncio.Future[RunResult]] = {}
        self._progress: dict[str, _Progress] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._redis_warned = False
        self.redis_down = REDIS_DOWN
        #: called on the loop whenever the GPU's last claim is released (GatedWorker polls at once)
        self.on_gpu_free: Callable[[], None] | None = None
        self.forecast = GpuEndForecast(settings.worker_handoff_lead_s)

    # -- the gate (called by GatedWorker) ----------------------------------------------------

    def gpu_free(self) -> bool:
        runner = self.runner
        return (
            runner is not None and not self._gpu_claims and not runner.gpu.busy and runner.gpu.wait_ready(0)
        )

    def claim(self, arq_id: str) -> None:
        self._gpu_claims.add(arq_id)

    def release(self, arq_id: str) -> None:
        if arq_id not in self._gpu_claims:
            return
        self._gpu_claims.discard(arq_id)
        if not self._gpu_claims and self.on_gpu_free is not None:
            self.on_gpu_free()

    def task_ended(self, arq_id: str) -> None:
        """arq is done with the job (result recorded, or given up): stop listing it."""
        self.release(arq_id)
        self.jobs.pop(arq_id, None)
        self.job_ids.pop(arq_id, None)
        self._progress.pop(arq_id, None)
        self.forecast.forget(arq_id)
        if self.redis is not None:
            self._spawn(self.beat())  # /info shows the worker idle now, not at the next beat

    # -- arq hooks ---------------------------------------------------------------------------

    async def startup(self, ctx: dict[str, Any]) -> None:
        """Load the pipelines once (on the GPU thread), then announce this worker."""
        self.redis = ctx["redis"]
        self._loop = asyncio.get_running_loop()
        s = self.settings
        self.runner = Runner(
            manager_factory=self._factory,
            job_timeout_s=s.job_timeout_s,
            step_watchdog_s=s.step_watchdog_s,
            on_start=self._runner_started,
            on_step=self._runner_step,
            on_gpu_done=self._runner_gpu_done,
            on_done=self._runner_done,
            preload=self._preload,
        )
        t0 = time.monotonic()
        self.runner.start()
        await self.runner.wait_loaded()  # a SIGTERM meanwhile cancels it (arq's handler)
        manager = self.runner.gpu.manager
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
        if self.runner is not None:
            await asyncio.to_thread(self.runner.close, 10.0)
        log.info("worker %s stopped after %d jobs", self.worker_id, self.jobs_done)

    async def after_job_end(self, ctx: dict[str, Any]) -> None:
        """arq has recorded the result: tell the bot to collect it now."""
        self.jobs_done += 1
        await self._event("done", job=ctx["job_id"])

    # -- the job -----------------------------------------------------------------------------

    async def run(self, arq_id: str, raw: dict[str, Any]) -> dict[str, Any]:
        """Run one job on the runner; returns a JobReport dict with the file inline or as a path.

        An abort (the bot's cancel) arrives as CancelledError: the GPU thread stops at its next
        step and the report says "cancelled". The GPU is released as soon as it is done, so the
        next job can start while this one is still being encoded.
        """
        runner = self.runner
        assert runner is not None and self._loop is not None
        if raw.get(BATCH_FIELD):
            return await run_batch(self, arq_id, raw)
        try:
            payload, item = await self.prepare(arq_id, raw)
        except (TypeError, ValueError, KeyError) as exc:
            self.release(arq_id)
            log.error("job %s: payload cannot be read: %s", arq_id, exc)
            return JobReport(status="failed", worker_id=self.worker_id, error=failures.DAMAGED).to_dict()
        self.jobs[arq_id] = JobPhase.RUNNING
        self.job_ids[arq_id] = payload.job_id
        done: asyncio.Future[RunResult] = self._loop.create_future()
        self._done[arq_id] = done
        try:
            runner.submit(item)
        except Exception:
            self._done.pop(arq_id, None)
            self.release(arq_id)
            log.exception("job %s: the GPU thread refused it", arq_id)
            error = failures.NOT_TAKEN.format(job_id=payload.job_id)
            return JobReport(status="failed", worker_id=self.worker_id, error=error).to_dict()
        self._spawn(self.beat())  # the bot sees at once who holds the job
        result = await self._wait(arq_id, done)
        await self._gpu_released(arq_id)
        return await self._report(payload, result)

    async def prepare(self, arq_id: str, raw: dict[str, Any]) -> tuple[JobPayload, RunItem]:
        """The payload read back and the runner's item for it (the input picture placed on disk)."""
        payload = JobPayload.from_dict(raw)
        request = request_from_dict(payload.request)
        if payload.image_data is not None:
            request = await asyncio.to_thread(self.place_input, payload, request)
        options = EncodeOptions(
            png_metadata=payload.png_metadata,
            crf=payload.video_crf,
            preset=payload.video_preset,
            unfiltered=payload.unfiltered,
        )
        item = RunItem(
            key=arq_id, request=request, encode=options, timeout_s=payload.timeout_s, job_id=payload.job_id
        )
        return payload, item

    async def _wait(self, arq_id: str, done: asyncio.Future[RunResult]) -> RunResult:
        """The run's result; a cancel (abort, shutdown) stops it at the next step first."""
        cancelled = False
        while True:
            try:
                result = await asyncio.shield(done)
                break
            except asyncio.CancelledError:
                if not cancelled and self.runner is not None:
                    log.info("job %s: cancel received, stopping at the next step", arq_id)
                    self.runner.cancel(arq_id)
                cancelled = True
        self._done.pop(arq_id, None)
        if cancelled:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        return result

    async def _gpu_released(self, arq_id: str) -> None:
        """The device is done with the job (once per job): open the gate and tell the bot."""
        if self.jobs.get(arq_id) != JobPhase.RUNNING:
            return
        self.release(arq_id)
        self.jobs[arq_id] = JobPhase.ENCODING
        await self._safe(self._event("gpu_done", job=arq_id))
        self._spawn(self.beat())

    async def _report(self, payload: JobPayload, result: RunResult) -> dict[str, Any]:
        run = result.report
        report = JobReport(
            status=result.status,
            worker_id=self.worker_id,
            error=result.error,
            gpu_seconds=round(run.gpu_seconds, 4),
            load_s=round(run.load_s, 4),
            encode_s=round(run.encode_s or 0.0, 4),
            oom_retries=run.oom_retries,
            memory_modes=list(run.memory_modes),
            batch_size=run.batch_size,
        )
        if result.status != "complete" or result.encoded is None:
            if result.exception is not None and result.status == "failed":
                log.warning("job %s failed: %s", payload.job_id, result.exception)
            return report.to_dict()
        try:
            found = await asyncio.to_thread(self.place, payload, result.encoded)
        except Exception:
            log.exception("job %s: storing the result failed", payload.job_id)
            error = failures.NOT_SAVED.format(job_id=payload.job_id)
            return {**report.to_dict(), "status": "failed", "error": error}
        return {**report.to_dict(), "media": found.to_dict()}

    def place_input(self, payload: JobPayload, request: GenerationRequest) -> GenerationRequest:
        """Blocking: the payload's input picture on this machine's disk, and the request pointing at it."""
        path = Path(tempfile.gettempdir()) / "imaginebot-inputs" / f"{payload.job_id}{payload.image_suffix}"
        write_atomic(path, payload.image_data or b"")
        return dataclasses.replace(request, image=str(path))

    def place(self, payload: JobPayload, encoded: EncodedMedia) -> MediaReport:
        """Blocking: the file travels inline in arq's result, or as a path on shared storage."""
        if not self._to_shared_storage(encoded.size):
            return MediaReport.describing(
                encoded, data=encoded.data, poster=encoded.poster, parts=list(encoded.parts)
            )
        folder = Path(self.settings.shared_results_dir or ".") / (payload.month or "unsorted")
        saved = save_encoded(folder, payload.job_id, encoded)
        poster = str(saved.poster_path) if saved.poster_path is not None else None
        return MediaReport.describing(encoded, path=str(saved.path), poster_path=poster)

    def _to_shared_storage(self, size: int) -> bool:
        s = self.settings
        if s.shared_results_dir is None or s.result_transfer == "bytes":
            return False
        return s.result_transfer == "path" or size > s.result_inline_max_bytes

    # -- runner callbacks (on its threads): hop onto the loop, nothing else -------------------

    def _call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the process is exiting
            log.debug("worker loop closed; dropping a runner callback")

    def _runner_started(self, arq_id: str) -> None:
        self._call_soon(self._on_started, arq_id)

    def _runner_step(self, arq_id: str, info: StepInfo) -> None:
        self._call_soon(self._on_step, arq_id, info)

    def _runner_gpu_done(self, arq_id: str) -> None:
        self._call_soon(lambda: self._spawn(self._gpu_released(arq_id)))

    def _runner_done(self, result: RunResult) -> None:
        self._call_soon(self._on_done, result)

    # -- on the loop -------------------------------------------------------------------------

    def _on_started(self, arq_id: str) -> None:
        self.forecast.began(arq_id)
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
        if self.forecast.due(arq_id, info.step, info.total):
            self._spawn(self._event("gpu_soon", job=arq_id))
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
                    fields["preview"] = await asyncio.to_thread(preview_png, image)
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

    def _on_done(self, result: RunResult) -> None:
        self.release(result.key)
        done = self._done.get(result.key)
        if done is not None and not done.done():
            done.set_result(result)
        else:
            log.warning("job %s: a result nobody waits for (%s)", result.key, result.status)

    # -- heartbeat and events ----------------------------------------------------------------

    async def beat(self) -> None:
        gpu = self.runner.gpu if self.runner is not None else None
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
            "batch": sum(1 for phase in self.jobs.values() if phase == JobPhase.RUNNING),
            "jobs_done": self.jobs_done,
            "restarts": gpu.restarts if gpu is not None else 0,
            "models": ",".join(manager.loaded_models()) if manager is not None else "",
            "tuning": manager.device_info()["tuning"]["summary"] if manager is not None else "",
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

    @property
    def done_futures(self) -> dict[str, asyncio.Future[RunResult]]:
        """The runs this worker waits for, by arq id (a batch's companions included)."""
        return self._done

    def spawn_task(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` beside the job (a batch's companions end after their lead returns)."""
        self._spawn(coro)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(self._safe(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
