"""The embedded executor: jobs run on this process's runner (:mod:`generation.runner`), whose GPU
thread generates and whose encode thread encodes, so encoding job k overlaps generating job k+1.

It is the only part of the bot that reaches torch and diffusers, through the runner; the queue
knows it only through the seam in :mod:`bot.core.executor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bot.core.executor import (
    RESULT_CRF,
    ExecutionSink,
    Outcome,
    PreviewFn,
    WorkerInfo,
    call_sink,
    count_batch,
    count_oom_retries,
)
from bot.core.jobs import Job, JobState, utcnow
from bot.core.moderation import NSFW_SPOILER
from bot.core.results import ResultWriter
from generation import failures
from generation.media import EncodeOptions, png_metadata, preview_png
from generation.models import build_registry
from generation.params import request_from_dict
from generation.pipelines import PipelineManager
from generation.runner import RunItem, Runner, RunResult

if TYPE_CHECKING:
    from bot.settings import Settings
    from generation.outputs import StepInfo

log = logging.getLogger(__name__)


class InProcessExecutor:
    """This process's runner: the GPU thread, plus one encode thread for PNG/MP4.

    A slot is free when the GPU thread is idle, or when its job has done its last denoising step
    (only the VAE decode is left) and no other job waits: the queue then claims the next
    job during the decode (a durable store write, milliseconds on a busy disk) and the GPU
    thread starts it the moment the current one ends. No slot is offered while
    `max_encode_backlog` results wait for encoding or saving, so a slow disk cannot make finished
    frames pile up in memory.
    """

    name = "inprocess"

    def __init__(
        self,
        *,
        settings: Settings,
        manager: PipelineManager | None = None,
        manager_factory: Callable[[], PipelineManager] | None = None,
        results: ResultWriter | None = None,
        max_encode_backlog: int = 2,
        preload: tuple[str, ...] = (),
    ) -> None:
        if manager is None and manager_factory is None:
            registry = build_registry(settings)
            manager_factory = lambda: PipelineManager(settings, registry)  # noqa: E731
        self.settings = settings
        self._manager = manager
        self._factory = manager_factory
        self.results = results or ResultWriter(results_dir=settings.results_dir)
        self.max_encode_backlog = max_encode_backlog
        self._preload = preload
        self._sink: ExecutionSink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: Runner | None = None
        self._jobs: dict[str, Job] = {}  # handed over, on the GPU
        self._run_of: dict[str, str] = {}  # a batched job's id -> the key its batch runs under
        self._finishing: dict[str, Job] = {}  # off the GPU: encoding, then saving
        self._finished = asyncio.Event()
        self._host = socket.gethostname()
        self._stopping = False
        self._idle = asyncio.Event()
        self._decoding: str | None = None  # the job that did its last step (decoding now)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- Executor --------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return 1

    @property
    def runner(self) -> Runner | None:
        return self._runner

    async def start(self, sink: ExecutionSink) -> None:
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        self._runner = Runner(
            manager=self._manager,
            manager_factory=self._factory,
            job_timeout_s=self.settings.job_timeout_s,
            step_watchdog_s=self.settings.step_watchdog_s,
            on_start=self._on_start,
            on_step=self._on_step,
            on_gpu_done=self._on_gpu_done,
            on_done=self._on_done,
            on_ready=self._on_ready,
            preload=self._preload,
        )
        self._runner.start()
        # the pipeline manager is built (and models preloaded) on the GPU thread; wait off the loop
        await self._runner.wait_loaded()
        sink.slot_free()

    async def stop(self, *, graceful: bool = True, timeout_s: float = 30.0) -> list[str]:
        self._stopping = True
        runner = self._runner
        deadline = time.monotonic() + timeout_s
        if runner is not None:
            running = runner.gpu.running_job_id
            for job_id in list(self._jobs):
                if not graceful or self._run_of.get(job_id, job_id) != running:
                    runner.cancel(job_id)  # a job that has not started yet is not waited for
            if not await self._wait_idle(deadline - time.monotonic()):
                for job_id in list(self._jobs):  # past the deadline: stop at the next step
                    runner.cancel(job_id)
                await self._wait_idle(5.0)
        await self._wait_finishing(max(1.0, deadline - time.monotonic()))
        if runner is not None:
            await asyncio.to_thread(runner.close, 5.0)
        lost = list(self._jobs)
        self._jobs.clear()
        return lost

    async def _wait_idle(self, timeout_s: float) -> bool:
        """Wait until the GPU holds no job of ours; False on timeout."""
        if not self._jobs:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=max(0.0, timeout_s))
        except TimeoutError:
            return False
        return True

    async def _wait_finishing(self, timeout_s: float) -> None:
        """Let results already off the GPU be encoded and saved, up to `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self._finishing and (left := deadline - time.monotonic()) > 0:
            self._finished.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finished.wait(), timeout=left)

    def free_slots(self) -> int:
        runner = self._runner
        if self._stopping or runner is None or not runner.gpu.wait_ready(0):
            return 0
        runs = {self._run_of.get(job_id, job_id) for job_id in self._jobs}
        if len(self._finishing) >= self.max_encode_backlog or len(runs) > 1:
            return 0
        if not runs:
            return 0 if runner.gpu.busy else 1
        (running,) = runs
        if running == self._decoding and not runner.gpu.has_waiting:
            return 1  # claim-ahead: the next job waits for the device, not for the store
        return 0

    async def execute(self, job: Job) -> None:
        await self.execute_batch([job])

    async def execute_batch(self, jobs: list[Job]) -> None:
        """Take claimed jobs that share one pipeline call (the dispatcher chose compatible ones);
        each still reports on its own."""
        runner = self._runner
        if runner is None or self._sink is None:
            raise RuntimeError("executor not started")
        by_id = {job.id: job for job in jobs}
        items = [item for job in jobs if (item := self._run_item(job)) is not None]
        if not items:
            return
        for item in items:
            self._jobs[item.key] = by_id[item.key]
        self._idle.clear()
        key = runner.submit_batch(items)
        if len(items) > 1:
            self._run_of.update((item.key, key) for item in items)
            log.info("jobs %s run as one batch", ", ".join(item.key for item in items))
        count_batch(len(items))

    def _run_item(self, job: Job) -> RunItem | None:
        """The runner's item for a job; None (and the job failed) when its parameters are damaged."""
        try:
            request = request_from_dict(job.params)
        except (TypeError, ValueError, KeyError) as exc:
            log.error("job %s: stored parameters cannot be read: %s", job.id, exc)
            outcome = Outcome(state=JobState.FAILED, error=failures.DAMAGED)
            call_sink(self._sink, "job_finished", job.id, outcome)
            return None
        options = EncodeOptions(
            png_metadata=png_metadata(request, job_id=job.id),
            crf=RESULT_CRF,
            unfiltered=job.nsfw_action == NSFW_SPOILER,
        )
        return RunItem(key=job.id, request=request, encode=options, timeout_s=self.settings.job_timeout_s)

    async def cancel(self, job_id: str) -> bool:
        runner = self._runner
        return bool(runner is not None and job_id in self._jobs and runner.cancel(job_id))

    def models_loaded(self) -> str:
        """Empty when the preloaded models are resident, else why not (the /readyz models check)."""
        runner = self._runner
        if runner is None or not runner.gpu.wait_ready(0):
            return "models not loaded (the GPU worker is still starting)"
        if runner.gpu.manager is None:
            return "models not loaded (the GPU worker could not start; see the log)"
        # only the configured (preloaded) models decide readiness: a member asking for some
        # other model that cannot load gets that job's error, the server stays ready
        errors = runner.gpu.load_errors
        return "; ".join(
            f"model {m} failed to load: {why}" for m, why in errors.items() if m in self._preload
        )

    def workers(self) -> list[WorkerInfo]:
        if self._runner is None:
            return []
        gpu = self._runner.gpu
        manager = gpu.manager
        beat = time.monotonic() - gpu.last_heartbeat
        return [
            WorkerInfo(
                id=f"{self._host}/gpu",
                host=self._host,
                device=manager.device if manager is not None else "?",
                busy=gpu.busy,
                job_id=gpu.current_job_id,
                jobs_done=gpu.jobs_done,
                last_heartbeat=datetime.fromtimestamp(time.time() - beat, tz=utcnow().tzinfo),
                alive=gpu.alive,
                restarts=gpu.restarts,
                tuning=manager.device_info()["tuning"]["summary"] if manager is not None else "",
                batch_size=max(1, sum(1 for key in self._run_of.values() if key == gpu.current_job_id)),
            )
        ]

    # -- runner callbacks (on its threads): forwarded to the loop, nothing else --------------

    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            log.debug("runner callback %s after the event loop closed", getattr(fn, "__name__", fn))

    def _on_start(self, job_id: str) -> None:
        worker_id = f"{self._host}/gpu"
        self._to_loop(lambda: call_sink(self._sink, "job_started", job_id, worker_id=worker_id))

    def _on_step(self, job_id: str, info: StepInfo) -> None:
        image = info.preview
        preview: PreviewFn | None = (lambda: preview_png(image)) if image is not None else None
        self._to_loop(self._stepped, job_id, info.step, info.total, preview)

    def _on_gpu_done(self, job_id: str) -> None:
        self._to_loop(self._gpu_done, job_id)

    def _on_done(self, result: RunResult) -> None:
        self._to_loop(self._run_done, result)

    def _on_ready(self) -> None:
        # a fresh GPU thread (after a hung step) is ready: jobs queued meanwhile can go now
        self._to_loop(call_sink, self._sink, "slot_free")

    # -- on the loop -----------------------------------------------------------------------

    def _stepped(self, job_id: str, step: int, total: int, preview: PreviewFn | None) -> None:
        call_sink(self._sink, "job_progress", job_id, step, total, preview)
        run = self._run_of.get(job_id, job_id)
        if total and step >= total and job_id in self._jobs and self._decoding != run:
            self._decoding = run
            call_sink(self._sink, "slot_free")

    def _off_gpu(self, job_id: str) -> Job | None:
        job = self._jobs.pop(job_id, None)
        run = self._run_of.pop(job_id, job_id)
        if self._decoding == run and run not in self._run_of.values():
            self._decoding = None
        if not self._jobs:
            self._idle.set()
        return job

    def _gpu_done(self, job_id: str) -> None:
        """The GPU finished the job's generation; its encoding (then saving) follows."""
        job = self._off_gpu(job_id)
        if job is None:
            log.warning("job %s: the GPU finished a job this executor does not hold", job_id)
            return
        self._finishing[job_id] = job
        call_sink(self._sink, "job_gpu_done", job_id)
        call_sink(self._sink, "slot_free")

    def _run_done(self, result: RunResult) -> None:
        job = self._off_gpu(result.key) or self._finishing.get(result.key)
        if job is None:
            log.warning("job %s: a result for a job this executor does not hold", result.key)
            return
        if result.report.oom_retries:
            count_oom_retries(job.model, result.report.oom_retries)
        if result.status == "complete" and result.encoded is not None:
            task = asyncio.create_task(self._save(job, result))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if result.exception is not None and result.status == "failed":
            log.warning("job %s failed: %s", job.id, result.exception)
        state = JobState.CANCELLED if result.status == "cancelled" else JobState.FAILED
        self._report(job, result, Outcome(state=state, error=result.error))

    async def _save(self, job: Job, result: RunResult) -> None:
        assert result.encoded is not None
        t0 = time.monotonic()
        try:
            saved = await asyncio.to_thread(self.results.save, job, result.encoded)
        except Exception:
            log.exception("job %s: saving the result failed", job.id)
            outcome = Outcome(state=JobState.FAILED, error=failures.NOT_SAVED.format(job_id=job.id))
        else:
            outcome = Outcome(state=JobState.COMPLETE, result=saved)
        self._report(job, result, outcome, save_s=time.monotonic() - t0)

    def _report(self, job: Job, result: RunResult, outcome: Outcome, *, save_s: float | None = None) -> None:
        """Report a job's end once, with the runner's figures."""
        timings = result.report.timings()
        if save_s is not None:
            timings["save_s"] = save_s
        outcome = dataclasses.replace(
            outcome, gpu_seconds=result.report.gpu_seconds, timings=timings, worker_id=result.report.worker_id
        )
        self._finishing.pop(job.id, None)
        if not self._finishing:
            self._finished.set()
        call_sink(self._sink, "job_finished", job.id, outcome)
        call_sink(self._sink, "slot_free")
