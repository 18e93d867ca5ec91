"""The arq executor's way back: worker events, progress, and results turned into files.

A worker reports ``started`` / ``gpu_done`` / ``done`` on the event stream; progress is read from
its run hash every ``PROGRESS_EDIT_INTERVAL_S``; the result (arq's result key, kept
``RESULT_KEEP_S``) holds the encoded file as bytes, or a path on shared storage, and the bot
writes the bytes under ``RESULTS_DIR`` off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from arq.constants import result_key_prefix
from arq.jobs import Job as ArqJob
from arq.jobs import JobResult as ArqResult
from arq.jobs import SerializationError
from arq.worker import JobExecutionFailed

from bot.core.arq_handoff import RECONNECT_S, REDIS_DOWN, ArqHandoff, HandedJob, as_text
from bot.core.executor import Outcome, PreviewFn, call_sink, count_oom_retries
from bot.core.jobs import Job, JobState
from bot.core.results import JobResult
from generation import failures
from generation.phases import JobPhase
from generation.scaleout import JobReport, MediaReport, decode_hash

log = logging.getLogger(__name__)


class ResultTransfer(ArqHandoff):
    """Hearing back from the workers: events, progress and results."""

    # -- events ------------------------------------------------------------------------------

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
                    self._last_event = as_text(entry_id)
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
        elif kind == "gpu_soon":
            self._mark_ending(h)
        elif kind == "gpu_done":
            self._mark_finishing(h, worker)
        elif kind == "done":
            self._spawn(self._collect(h), name=f"arq-collect-{h.job.id[:8]}")

    def _mark_running(self, h: HandedJob, worker: str | None) -> None:
        if worker:
            h.worker = worker
        if h.phase == JobPhase.ENQUEUED:
            h.phase = JobPhase.RUNNING
        if not h.started_reported:
            h.started_reported = True
            call_sink(self._sink, "job_started", h.job.id, worker_id=h.worker or "?")

    def _mark_ending(self, h: HandedJob) -> None:
        """Its GPU will be free in a moment: the dispatcher may hand that GPU its next job now."""
        group = h.lead or h.arq_id
        for other in self._handed.values():
            if (other.lead or other.arq_id) == group:
                other.ending = True
        call_sink(self._sink, "slot_free")

    def _mark_finishing(self, h: HandedJob, worker: str | None) -> None:
        if h.phase == JobPhase.FINISHING:
            return
        self._mark_running(h, worker)
        h.phase = JobPhase.FINISHING
        call_sink(self._sink, "job_gpu_done", h.job.id)
        call_sink(self._sink, "slot_free")

    # -- results -----------------------------------------------------------------------------

    async def _collect(self, h: HandedJob) -> None:
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
            await self._finish(
                h, Outcome(state=JobState.FAILED, error=failures.CRASHED.format(job_id=h.job.id))
            )
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

    async def _outcome(self, h: HandedJob, info: ArqResult) -> Outcome:
        job, value = h.job, info.result
        if not info.success or not isinstance(value, dict):
            if isinstance(value, asyncio.CancelledError):
                return Outcome(state=JobState.CANCELLED, error=failures.CANCELLED)
            if isinstance(value, JobExecutionFailed):
                # arq gave up on this dispatch without running it to an end (its worker stopped
                # mid-job, or the job expired): the queue decides on a new try
                log.warning("job %s: arq gave up on it (%s)", job.id, value)
                return Outcome(state=JobState.FAILED, retryable=True, error=failures.LOST)
            if isinstance(value, TimeoutError):
                error = failures.TIMED_OUT.format(limit_s=self.settings.job_timeout_s)
                return Outcome(state=JobState.FAILED, error=error)
            log.error("job %s failed on its worker: %r", job.id, value)
            return Outcome(state=JobState.FAILED, error=failures.CRASHED.format(job_id=job.id))
        report = JobReport.from_dict(value)
        timings = {"load_s": report.load_s, "generate_s": report.gpu_seconds, "encode_s": report.encode_s}
        if report.batch_size > 1:
            timings["batch_size"] = float(report.batch_size)
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
                error = failures.NOT_SAVED.format(job_id=job.id)
                return Outcome(state=JobState.FAILED, error=error, **common)
            timings["transfer_s"] = time.monotonic() - t0
            return Outcome(state=JobState.COMPLETE, result=result, **common)
        state = JobState.CANCELLED if report.status == "cancelled" else JobState.FAILED
        return Outcome(state=state, error=report.error or failures.CRASHED.format(job_id=job.id), **common)

    def _store_media(self, job: Job, found: MediaReport) -> JobResult:
        """Blocking (a thread): write inline bytes under RESULTS_DIR, or check the shared path."""
        if found.data is not None:
            return self.results.save(job, found.encoded())
        if not found.path:
            raise ValueError("the worker's report has neither bytes nor a path")
        path = Path(found.path)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise FileNotFoundError(
                f"{path} is not readable here; SHARED_RESULTS_DIR must be mounted at the same path "
                "on the bot and on every worker"
            ) from exc
        poster = found.poster_path if found.poster_path and Path(found.poster_path).exists() else None
        return JobResult(
            path=str(path),
            media_type=found.media_type,
            size_bytes=size,
            poster_path=poster,
            width=found.width,
            height=found.height,
            frames=found.frames,
            fps=found.fps,
            nsfw_detected=found.nsfw_detected,
        )

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
            step, total, pseq = int(step_b), int(total_b), as_text(pseq_b) or ""
            preview: PreviewFn | None = None
            if pseq and pseq != h.pseq:
                data = await redis.hget(self.keys.run(h.arq_id), "preview")
                h.pseq = pseq
                if data:
                    preview = lambda png=bytes(data): png  # noqa: E731
            if step != h.step or preview is not None:
                h.step = step
                call_sink(self._sink, "job_progress", h.job.id, step, total, preview)
