"""The seam between the queue and whatever runs jobs: one Protocol, and the in-process default.

The queue (:mod:`bot.core.queue`, by :mod:`bot.core.fair_order`) decides *which* job runs next
and owns every record in the store; an :class:`Executor` only *runs* what it is handed and
reports back. The shape follows arq's worker: the queue claims a job (a lease in the store), calls
:meth:`Executor.execute` when :meth:`Executor.free_slots` says there is room, and hears
``job_started``, ``job_progress``, ``slot_free`` and exactly one ``job_finished`` through the
:class:`ExecutionSink` it gave to :meth:`Executor.start`. Nothing in the contract assumes the
worker shares the bot's process: a distributed executor (arq on Redis) implements the same
five methods, reports from its own tasks, and returns results as files the bot can read.

Sink methods are plain functions that must be called on the event loop's thread
(``loop.call_soon_threadsafe`` from anywhere else); the queue does its own I/O after them.

:class:`InProcessExecutor` is the embedded default: a :class:`generation.worker.GPUWorker`
thread for the device and one encode thread, so encoding job k overlaps generating job k+1.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from bot.core.jobs import Job, JobState, utcnow
from bot.core.results import JobResult, ResultWriter, preview_png

if TYPE_CHECKING:
    from bot.settings import Settings
    from generation.pipelines import PipelineManager, StepInfo
    from generation.worker import GPUWorker, WorkOutcome

log = logging.getLogger(__name__)

#: a zero-argument function returning a small PNG of the current preview; blocking (call it
#: off the loop) and only when the preview will really be shown
PreviewFn = Callable[[], bytes]


@dataclass(frozen=True)
class Outcome:
    """How a job ended on its executor.

    `error` is safe to show the member. `retryable` means the job never really ran to an end
    (its worker vanished): the queue re-queues it while tries are left.
    """

    state: JobState
    result: JobResult | None = None
    error: str | None = None
    gpu_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    retryable: bool = False
    worker_id: str | None = None


@dataclass(frozen=True)
class WorkerInfo:
    """One worker as /info and /metrics show it."""

    id: str
    host: str
    device: str
    busy: bool
    job_id: str | None
    jobs_done: int
    last_heartbeat: datetime | None
    alive: bool
    restarts: int = 0


@runtime_checkable
class ExecutionSink(Protocol):
    """What an executor reports to; every method is called on the event loop's thread."""

    def job_started(self, job_id: str, *, worker_id: str) -> None: ...

    def job_progress(self, job_id: str, step: int, total: int, preview: PreviewFn | None) -> None: ...

    def job_gpu_done(self, job_id: str) -> None:
        """The device is done with the job; only encoding or transfer of its result remain."""

    def slot_free(self) -> None:
        """Room for another job (the GPU finished one, even if its encoding still runs)."""

    def job_finished(self, job_id: str, outcome: Outcome) -> None: ...


@runtime_checkable
class Executor(Protocol):
    """Runs claimed jobs. The queue never assumes where."""

    name: str

    async def start(self, sink: ExecutionSink) -> None: ...

    async def stop(self, *, graceful: bool = True, timeout_s: float = 30.0) -> list[str]:
        """Stop taking jobs; with `graceful`, let running ones finish (up to `timeout_s`), else
        cancel them. Returns the ids of jobs handed over that never got a `job_finished`."""

    def free_slots(self) -> int:
        """How many more jobs `execute` accepts right now (0 while busy or not started)."""

    @property
    def capacity(self) -> int:
        """Jobs it can run at once when idle (used to spread ETAs)."""

    async def execute(self, job: Job) -> None:
        """Take one claimed job; returns once handed over, not when done."""

    async def cancel(self, job_id: str) -> bool:
        """Ask a running job to stop at its next step; False if this executor does not have it."""

    def workers(self) -> list[WorkerInfo]: ...


class InProcessExecutor:
    """The GPU thread of this process, plus one encode thread for PNG/MP4 and disk writes.

    A slot is free when the GPU thread is idle, or when its job has done its last denoising step
    (only the VAE decode is left) and no other job waits: the queue then claims the next
    job during the decode (a durable store write, milliseconds on a busy disk) and the GPU
    thread starts it the moment the current one ends. No slot is offered while
    `max_encode_backlog` results wait for encoding, so a slow disk cannot make finished frames
    pile up in memory.
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
            from generation.models import build_registry
            from generation.pipelines import PipelineManager

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
        self._worker: GPUWorker | None = None
        self._encoder: ThreadPoolExecutor | None = None
        self._jobs: dict[str, Job] = {}  # handed over, on the GPU
        self._encoding: dict[str, asyncio.Future[Any]] = {}
        self._host = socket.gethostname()
        self._stopping = False
        self._idle = asyncio.Event()
        self._decoding: str | None = None  # the job that did its last step (decoding now)

    # -- Executor --------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return 1

    @property
    def worker(self) -> GPUWorker | None:
        return self._worker

    async def start(self, sink: ExecutionSink) -> None:
        from generation.worker import GPUWorker

        self._sink = sink
        self._loop = asyncio.get_running_loop()
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")
        self._worker = GPUWorker(
            manager=self._manager,
            manager_factory=self._factory,
            job_timeout_s=self.settings.job_timeout_s,
            step_watchdog_s=self.settings.step_watchdog_s,
            on_start=self._on_start,
            on_step=self._on_step,
            on_done=self._on_done,
            on_ready=self._on_ready,
            name="gpu",
            preload=self._preload,
        )
        self._worker.start()
        # the pipeline manager is built (and models preloaded) on the GPU thread; wait off the loop
        await asyncio.to_thread(self._worker.wait_ready)
        sink.slot_free()

    async def stop(self, *, graceful: bool = True, timeout_s: float = 30.0) -> list[str]:
        self._stopping = True
        worker = self._worker
        deadline = time.monotonic() + timeout_s
        if worker is not None:
            running = worker.running_job_id
            for job_id in list(self._jobs):
                if not graceful or job_id != running:
                    worker.cancel(job_id)  # a job that has not started yet is not waited for
            if not await self._wait_idle(deadline - time.monotonic()):
                for job_id in list(self._jobs):  # past the deadline: stop at the next step
                    worker.cancel(job_id)
                await self._wait_idle(5.0)
        if self._encoding:
            await asyncio.wait(list(self._encoding.values()), timeout=max(1.0, deadline - time.monotonic()))
        if worker is not None:
            await asyncio.to_thread(worker.close, 5.0)
        if self._encoder is not None:
            self._encoder.shutdown(wait=False, cancel_futures=False)
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

    def free_slots(self) -> int:
        worker = self._worker
        if self._stopping or worker is None or not worker.wait_ready(0):
            return 0
        if len(self._encoding) >= self.max_encode_backlog or len(self._jobs) > 1:
            return 0
        if not self._jobs:
            return 0 if worker.busy else 1
        (running,) = self._jobs
        if running == self._decoding and not worker.has_waiting:
            return 1  # claim-ahead: the next job waits for the device, not for the store
        return 0

    async def execute(self, job: Job) -> None:
        from generation.params import request_from_dict
        from generation.worker import WorkItem

        worker = self._worker
        if worker is None or self._sink is None:
            raise RuntimeError("executor not started")
        try:
            request = request_from_dict(job.params)
        except (TypeError, ValueError, KeyError) as exc:
            log.error("job %s: stored parameters cannot be read: %s", job.id, exc)
            self._sink.job_finished(
                job.id, Outcome(state=JobState.FAILED, error="This request's stored parameters are damaged.")
            )
            return
        self._jobs[job.id] = job
        self._idle.clear()
        worker.submit(WorkItem(job_id=job.id, request=request, timeout_s=self.settings.job_timeout_s))

    async def cancel(self, job_id: str) -> bool:
        worker = self._worker
        return bool(worker is not None and job_id in self._jobs and worker.cancel(job_id))

    def models_loaded(self) -> str:
        """Empty when the preloaded models are resident, else why not (the /readyz models check)."""
        worker = self._worker
        if worker is None or not worker.wait_ready(0):
            return "models not loaded (the GPU worker is still starting)"
        if worker.manager is None:
            return "models not loaded (the GPU worker could not start; see the log)"
        # only the configured (preloaded) models decide readiness: a member asking for some
        # other model that cannot load gets that job's error, the server stays ready
        return "; ".join(
            f"model {m} failed to load: {why}" for m, why in worker.load_errors.items() if m in self._preload
        )

    def workers(self) -> list[WorkerInfo]:
        worker = self._worker
        if worker is None:
            return []
        manager = worker.manager
        device = manager.device if manager is not None else "?"
        beat = time.monotonic() - worker.last_heartbeat
        return [
            WorkerInfo(
                id=f"{self._host}/gpu",
                host=self._host,
                device=device,
                busy=worker.busy,
                job_id=worker.current_job_id,
                jobs_done=worker.jobs_done,
                last_heartbeat=datetime.fromtimestamp(time.time() - beat, tz=utcnow().tzinfo),
                alive=worker.alive,
                restarts=worker.restarts,
            )
        ]

    # -- GPU-thread callbacks: forwarded to the loop, nothing else -------------------------

    def _on_start(self, job_id: str) -> None:
        assert self._loop is not None and self._sink is not None
        worker_id = f"{self._host}/gpu"
        self._loop.call_soon_threadsafe(
            lambda: call_sink(self._sink, "job_started", job_id, worker_id=worker_id)
        )

    def _on_step(self, job_id: str, info: StepInfo) -> None:
        assert self._loop is not None
        image = info.preview
        preview: PreviewFn | None = (lambda: preview_png(image)) if image is not None else None
        self._loop.call_soon_threadsafe(self._stepped, job_id, info.step, info.total, preview)

    def _on_done(self, outcome: WorkOutcome) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._gpu_done, outcome)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            log.warning("job %s finished after the event loop closed", outcome.job_id)

    def _on_ready(self) -> None:
        # a fresh GPU thread (after a hung step) is ready: jobs queued meanwhile can go now
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(call_sink, self._sink, "slot_free")
        except RuntimeError:  # the loop is closed
            log.debug("GPU worker ready after the event loop closed")

    # -- on the loop -----------------------------------------------------------------------

    def _stepped(self, job_id: str, step: int, total: int, preview: PreviewFn | None) -> None:
        call_sink(self._sink, "job_progress", job_id, step, total, preview)
        if total and step >= total and job_id in self._jobs and self._decoding != job_id:
            self._decoding = job_id
            call_sink(self._sink, "slot_free")

    def _gpu_done(self, outcome: WorkOutcome) -> None:
        job = self._jobs.pop(outcome.job_id, None)
        if self._decoding == outcome.job_id:
            self._decoding = None
        if not self._jobs:
            self._idle.set()
        if job is None:
            log.warning("job %s: outcome from the GPU for a job this executor does not hold", outcome.job_id)
            return
        timings = {"load_s": outcome.load_s, "generate_s": outcome.gpu_seconds}
        if outcome.oom_retries:
            timings["oom_retries"] = float(outcome.oom_retries)
            count_oom_retries(job.model, outcome.oom_retries)
        if outcome.status == "complete" and outcome.output is not None:
            assert self._loop is not None and self._encoder is not None
            call_sink(self._sink, "job_gpu_done", job.id)
            t0 = time.monotonic()
            future = self._loop.run_in_executor(self._encoder, self.results.write, job, outcome.output)
            self._encoding[job.id] = future
            future.add_done_callback(lambda f: self._encoded(job, outcome, timings, t0, f))
        else:
            state = JobState.CANCELLED if outcome.status == "cancelled" else JobState.FAILED
            if outcome.exception is not None and outcome.status == "failed":
                log.warning("job %s failed: %s", job.id, outcome.exception)
            call_sink(
                self._sink,
                "job_finished",
                job.id,
                Outcome(
                    state=state,
                    error=outcome.error,
                    gpu_seconds=outcome.gpu_seconds,
                    timings=timings,
                    worker_id=outcome.worker_id,
                ),
            )
        call_sink(self._sink, "slot_free")

    def _encoded(
        self,
        job: Job,
        outcome: WorkOutcome,
        timings: dict[str, float],
        t0: float,
        future: asyncio.Future[Any],
    ) -> None:
        self._encoding.pop(job.id, None)
        timings["encode_s"] = time.monotonic() - t0
        exc = future.exception() if not future.cancelled() else asyncio.CancelledError()
        if exc is not None:
            log.error("job %s: encoding the result failed", job.id, exc_info=exc)
            result_outcome = Outcome(
                state=JobState.FAILED,
                error=f"The result could not be saved (job {job.id}); the admins can find it in the log.",
                gpu_seconds=outcome.gpu_seconds,
                timings=timings,
                worker_id=outcome.worker_id,
            )
        else:
            result_outcome = Outcome(
                state=JobState.COMPLETE,
                result=future.result(),
                gpu_seconds=outcome.gpu_seconds,
                timings=timings,
                worker_id=outcome.worker_id,
            )
        call_sink(self._sink, "job_finished", job.id, result_outcome)
        call_sink(self._sink, "slot_free")


def call_sink(sink: ExecutionSink | None, method: str, *args: Any, **kwargs: Any) -> None:
    """Report to the queue (on the loop); a failing sink is logged, never raised into the
    executor's own bookkeeping."""
    if sink is None:
        return
    try:
        getattr(sink, method)(*args, **kwargs)
    except Exception:
        log.exception("executor sink %s failed", method)


def count_oom_retries(model: str, n: int) -> None:
    """Count a job's out-of-memory retries in /metrics (best effort: metrics may be absent)."""
    try:
        from bot.core import metrics

        metrics.OOM_RETRIES.labels(model=model).inc(n)
    except Exception:
        log.debug("could not count OOM retries", exc_info=True)
