"""Who hears about jobs moving through the queue (Discord delivery, the web server, metrics), and
the bus that tells them: per job, in order, one event at a time, never blocking the queue."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from bot.core.executor import PreviewFn
from bot.core.jobs import Job
from bot.core.results import JobResult

log = logging.getLogger(__name__)


@runtime_checkable
class JobListener(Protocol):
    """Reacts to jobs moving through the queue.

    Events of one job reach a listener in order (queued, started, progress…, finished) and one
    at a time; progress is throttled to ``PROGRESS_EDIT_INTERVAL_S`` per job, and a progress
    event still waiting when a newer one arrives is replaced by it. `on_finished` gets the final
    record (state complete, failed or cancelled; `error` safe to show) and, when complete, the
    result file. A listener that delivers calls :meth:`JobQueue.mark_delivered` afterwards.
    """

    async def on_queued(self, job: Job) -> None: ...

    async def on_started(self, job: Job) -> None: ...

    async def on_progress(self, job: Job, step: int, total: int, preview_png: bytes | None) -> None: ...

    async def on_finished(self, job: Job, result: JobResult | None) -> None: ...


class BaseJobListener:
    """No-op listener to subclass: override only what you need."""

    async def on_queued(self, job: Job) -> None:
        return None

    async def on_started(self, job: Job) -> None:
        return None

    async def on_progress(self, job: Job, step: int, total: int, preview_png: bytes | None) -> None:
        return None

    async def on_finished(self, job: Job, result: JobResult | None) -> None:
        return None


@dataclass
class Event:
    kind: str  # queued | started | progress | finished
    job: Job
    step: int = 0
    total: int = 0
    preview: PreviewFn | None = None
    result: JobResult | None = None


class ListenerBus:
    """Per-job, in-order, one-at-a-time delivery of events to every listener.

    Each job with pending events has one pump task, so a slow listener delays only that job's
    later events, never the queue or other jobs.
    """

    def __init__(self) -> None:
        self.listeners: list[JobListener] = []
        self._chans: dict[str, deque[Event]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def queued(self, job: Job) -> None:
        self.emit(Event("queued", job))

    def started(self, job: Job) -> None:
        self.emit(Event("started", job))

    def progress(self, job: Job, step: int, total: int, preview: PreviewFn | None) -> None:
        self.emit(Event("progress", job, step=step, total=total, preview=preview))

    def finished(self, job: Job, result: JobResult | None = None) -> None:
        self.emit(Event("finished", job, result=result))

    def emit(self, event: Event) -> None:
        if not self.listeners:
            return
        job_id = event.job.id
        chan = self._chans.setdefault(job_id, deque())
        if event.kind == "progress" and chan and chan[-1].kind == "progress":
            chan[-1] = event  # coalesce: only the newest progress is worth showing
        else:
            chan.append(event)
        if job_id not in self._tasks:
            self._tasks[job_id] = asyncio.create_task(self._pump(job_id), name=f"listeners-{job_id[:8]}")

    async def _pump(self, job_id: str) -> None:
        chan = self._chans[job_id]
        try:
            while chan:
                event = chan.popleft()
                await self._deliver(event)
        finally:
            self._tasks.pop(job_id, None)
            if not chan:
                self._chans.pop(job_id, None)
            else:  # cancelled mid-way: keep the rest for drain() to report
                log.debug("listener events for %s left undelivered", job_id)

    async def _deliver(self, event: Event) -> None:
        preview_png: bytes | None = None
        if event.kind == "progress" and event.preview is not None:
            try:
                preview_png = await asyncio.to_thread(event.preview)
            except Exception:
                log.warning("job %s: preview could not be encoded", event.job.id, exc_info=True)
        for listener in list(self.listeners):
            try:
                if event.kind == "queued":
                    await listener.on_queued(event.job)
                elif event.kind == "started":
                    await listener.on_started(event.job)
                elif event.kind == "progress":
                    await listener.on_progress(event.job, event.step, event.total, preview_png)
                else:
                    await listener.on_finished(event.job, event.result)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "listener %s failed on %s of job %s", type(listener).__name__, event.kind, event.job.id
                )

    async def drain(self, timeout_s: float) -> None:
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
