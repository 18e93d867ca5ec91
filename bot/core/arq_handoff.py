"""The arq executor's shared part: what was handed to arq, and how.

:class:`ArqHandoff` holds the state every part of :class:`bot.core.arq_executor.ArqExecutor`
reads (the handed jobs, the live workers, the Redis connection) and does the handing itself:
put a job into arq's queue, take it back while no worker has started it, cancel it, forget a
dispatch for good, and report a job's end to the queue exactly once. The other parts are
:mod:`bot.core.arq_watch` (heartbeats, lost workers, lost jobs) and :mod:`bot.core.arq_transfer`
(events, progress and results coming back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from arq.connections import ArqRedis
from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import Job as ArqJob
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from bot.core.executor import ExecutionSink, Outcome, call_sink
from bot.core.jobs import Job, JobState
from bot.core.results import ResultWriter
from generation import failures
from generation.phases import JobPhase
from generation.scaleout import BATCH_FIELD, JOB_FUNCTION, Keys

if TYPE_CHECKING:
    from bot.settings import Settings

log = logging.getLogger(__name__)

REDIS_DOWN: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
)
#: while Redis is unreachable, how long the loops wait before trying again
RECONNECT_S = 0.5


@dataclass
class HandedJob:
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
    #: the arq id of the batch's lead job that carries this companion to its worker
    lead: str | None = None
    #: its worker said the GPU is nearly done with it (``gpu_soon``): that GPU counts as free
    ending: bool = False
    step: int = -1
    pseq: str = ""
    handed_mono: float = field(default_factory=time.monotonic)


def arq_job_id(job: Job) -> str:
    """One id per dispatch: re-enqueueing the same dispatch is a no-op, a retry is a new job."""
    started = job.started_at.timestamp() if job.started_at is not None else time.time()
    return f"{job.id}.{job.attempts}.{int(started * 1000)}"


class ArqHandoff:
    """The jobs handed to arq and the Redis plumbing; see the module docstring."""

    def __init__(self, *, settings: Settings, results: ResultWriter | None = None) -> None:
        if not settings.queue_url:
            raise ValueError("the arq executor needs QUEUE_URL (redis://host:port/db)")
        self.settings = settings
        self.keys = Keys(settings.queue_name)
        self.results = results or ResultWriter(results_dir=settings.results_dir)
        self.redis: ArqRedis | None = None
        self._sink: ExecutionSink | None = None
        self._handed: dict[str, HandedJob] = {}  # bot job id ->
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

    # -- provided by the other parts (bot.core.arq_watch, bot.core.arq_transfer) ------------

    async def _sweep(self) -> None:
        raise NotImplementedError

    async def _collect(self, h: HandedJob) -> None:
        raise NotImplementedError

    def _mark_running(self, h: HandedJob, worker: str | None) -> None:
        raise NotImplementedError

    # -- handing over ------------------------------------------------------------------------

    async def _enqueue(self, h: HandedJob) -> None:
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

    async def _send_cancel(self, h: HandedJob) -> None:
        if h.lead is not None:
            await self._cancel_companion(h)
            return
        try:
            if not h.in_redis or (h.phase == JobPhase.ENQUEUED and await self._withdraw(h.arq_id)):
                await self._rehand_companions(h)
                await self._finish(
                    h, Outcome(state=JobState.CANCELLED, error=failures.CANCELLED_BEFORE_START)
                )
                return
            job = ArqJob(h.arq_id, self._redis(), _queue_name=self.keys.queue)
            with contextlib.suppress(TimeoutError):
                await job.abort(timeout=0, poll_delay=0)
            h.cancel_sent = True
        except REDIS_DOWN as exc:
            log.warning("job %s: cancel not delivered yet (%s); retrying", h.job.id, exc)

    async def _rehand_companions(self, lead: HandedJob) -> None:
        """A lead taken back before any worker started it carried its companions: they go back
        to arq as a batch of their own, the first of them leading, on the same try."""
        companions = [c for c in self._handed.values() if c.lead == lead.arq_id]
        if not companions:
            return
        head, rest = companions[0], companions[1:]
        head.lead, head.in_redis = None, False
        head.payload.pop(BATCH_FIELD, None)
        if rest:
            head.payload[BATCH_FIELD] = [{"arq_id": c.arq_id, "payload": c.payload} for c in rest]
            for c in rest:
                c.lead = head.arq_id
        log.info("job %s left its batch before it started; %s leads the rest", lead.job.id, head.job.id)
        await self._enqueue(head)

    async def _cancel_companion(self, h: HandedJob) -> None:
        """A batch's companion is no arq job: its worker reads the abort set and drops it from
        the call; one its worker has not started ends here at once."""
        try:
            await self._redis().zadd(abort_jobs_ss, {h.arq_id: int(time.time() * 1000)})
        except REDIS_DOWN as exc:
            log.warning("job %s: cancel not delivered yet (%s); retrying", h.job.id, exc)
            return
        h.cancel_sent = True
        if h.phase == JobPhase.ENQUEUED:
            await self._finish(h, Outcome(state=JobState.CANCELLED, error=failures.CANCELLED_BEFORE_START))

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
        """Jobs a previous bot process left in arq's queue: the queue re-runs them from the
        store under new ids, so take back those not started and abort those running."""
        redis = self._redis()
        ids = [as_text(i) for i in await redis.zrange(self.keys.queue, 0, -1)]
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

    # -- reporting the end -------------------------------------------------------------------

    async def _finish(self, h: HandedJob, outcome: Outcome) -> None:
        """Report a handed job's end exactly once."""
        if self._handed.get(h.job.id) is not h:
            return
        self._forget(h)
        call_sink(self._sink, "job_finished", h.job.id, outcome)
        call_sink(self._sink, "slot_free")

    def _forget(self, h: HandedJob) -> None:
        if self._handed.get(h.job.id) is h:
            del self._handed[h.job.id]
        self._by_arq.pop(h.arq_id, None)
        self._changed.set()

    # -- plumbing ----------------------------------------------------------------------------

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


def as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def as_text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
