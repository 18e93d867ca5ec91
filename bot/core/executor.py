"""The seam between the queue and whatever runs jobs: the Executor protocol and what crosses it.

The queue (:mod:`bot.core.queue`, by :mod:`bot.core.fair_order`) decides *which* job runs next
and owns every record in the store; an :class:`Executor` only *runs* what it is handed and
reports back. The shape follows arq's worker: the queue claims a job (a lease in the store), calls
:meth:`Executor.execute` when :meth:`Executor.free_slots` says there is room, and hears
``job_started``, ``job_progress``, ``slot_free`` and exactly one ``job_finished`` through the
:class:`ExecutionSink` it gave to :meth:`Executor.start`. Nothing in the contract assumes the
worker shares the bot's process: a distributed executor (arq on Redis) implements the same
five methods, reports from its own tasks, and returns results as files the bot can read: what
crosses the seam is always an encoded file (a :class:`JobResult`), never raw frames.

Sink methods are plain functions that must be called on the event loop's thread
(``loop.call_soon_threadsafe`` from anywhere else); the queue does its own I/O after them.

The executors: :class:`bot.core.inprocess.InProcessExecutor`, the embedded default, runs jobs on
this process's runner (:mod:`generation.runner`); :class:`bot.core.arq_executor.ArqExecutor` hands
them to arq workers. This module is only the seam, so that the queue reaching it never reaches
torch or diffusers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from bot.core.jobs import Job, JobState
from bot.core.results import JobResult

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

#: H.264 quality of the results the bot keeps: near-transparent, since delivery may re-encode
#: them smaller to fit an upload limit (`generation.media.fit_file_to_size`)
RESULT_CRF = 20

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
    #: the tuned path per resident model ("sd15: sdpa · fused QKV · channels_last"), for /info
    tuning: str = ""
    #: jobs sharing the pipeline call it runs now (more than 1: members' requests batched)
    batch_size: int = 1


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


def call_sink(sink: ExecutionSink | None, method: str, *args: Any, **kwargs: Any) -> None:
    """Report to the queue (on the loop); a failing sink is logged, never raised into the
    executor's own bookkeeping."""
    if sink is None:
        return
    try:
        getattr(sink, method)(*args, **kwargs)
    except Exception:
        log.exception("executor sink %s failed", method)


def count_batch(size: int) -> None:
    """Count one pipeline call's batch size in /metrics (best effort: metrics may be absent)."""
    try:
        from bot.core import metrics

        metrics.BATCH_SIZE.observe(size)
    except Exception:
        log.debug("could not count a batch", exc_info=True)


def count_oom_retries(model: str, n: int) -> None:
    """Count a job's out-of-memory retries in /metrics (best effort: metrics may be absent)."""
    try:
        from bot.core import metrics

        metrics.OOM_RETRIES.labels(model=model).inc(n)
    except Exception:
        log.debug("could not count OOM retries", exc_info=True)
