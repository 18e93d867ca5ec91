"""One arq worker per GPU: ``python -m generation.worker`` on any machine that can reach Redis.

The process loads its pipelines once at start-up and then serves arq jobs from the bot's queue
(the work itself is :class:`generation.worker_runtime.WorkerRuntime`, on the same runner the
embedded bot uses). It needs no Discord token, and never imports Discord: it returns encoded
files, and the bot delivers them.

What arq does for us, unchanged: the queue (a sorted set), unique job ids, one run per job
(``max_tries=1``: a re-run after a lost worker is a new job the bot's queue decides on, with the
attempt counted in its store), ``job_timeout`` as a backstop behind the GPU thread's own timeout,
aborts (the bot's cancel), results with expiry, and its health-check key.

What is added, and why: :class:`GatedWorker` takes a job only while this worker's GPU is free.
arq's ``max_jobs`` is 2 so that encoding job k (on the runner's encode thread) overlaps generating
job k+1 on the GPU, as in the embedded path; the gate keeps it at one job on the GPU, so a worker
never sits on a job another idle worker could run, and the bot's fair order holds. It also rides
out a Redis restart instead of letting arq's poll loop die on a connection error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from typing import Any

from arq.constants import in_progress_key_prefix
from arq.worker import Worker, func

from generation.scaleout import JOB_FUNCTION, ScaleoutSettings, redis_settings
from generation.worker_runtime import REDIS_DOWN, WorkerRuntime

log = logging.getLogger(__name__)

#: jobs arq may hold at once: one on the GPU and one being encoded
MAX_JOBS = 2


class GatedWorker(Worker):
    """arq's Worker, taking a job only while the GPU is free, and riding out Redis restarts.

    arq reads up to ``queue_read_limit`` ids per poll and would start as many as ``max_jobs``
    allows; here each poll starts at most one, and only when :meth:`WorkerRuntime.gpu_free`.
    Ids of jobs running on other workers stay in arq's queue until they finish: one pipelined
    read of their in-progress keys skips them, rather than one transaction per id (with 32
    workers that was ~60 ms of every free worker's poll).

    Pacing is ours too: arq's loop runs back to back and each iteration waits up to
    ``WORKER_POLL_DELAY_S`` *or* until this worker's GPU frees, so a job already waiting in
    arq's queue starts the moment the previous one leaves the GPU, not a poll later.
    """

    def __init__(self, *args: Any, runtime: WorkerRuntime, **kwargs: Any) -> None:
        self.runtime = runtime
        self._redis_down = False
        super().__init__(*args, **kwargs)
        self._pace_s = self.poll_delay_s
        self.poll_delay_s = 0.0
        self._gpu_freed = asyncio.Event()
        runtime.on_gpu_free = self._gpu_freed.set

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        if not self.allow_pick_jobs or not self.runtime.gpu_free():
            return
        for job_id_b in await self._not_started(job_ids):
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

    async def _not_started(self, job_ids: list[bytes]) -> list[bytes]:
        """The ids no worker has started (arq's own transaction still guards each start)."""
        if len(job_ids) <= 1:
            return job_ids
        async with self.pool.pipeline(transaction=False) as pipe:
            for job_id_b in job_ids:
                pipe.exists(in_progress_key_prefix + job_id_b.decode())
            started = await pipe.execute()
        return [job_id_b for job_id_b, ongoing in zip(job_ids, started, strict=True) if not ongoing]

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
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._gpu_freed.wait(), timeout=self._pace_s)
        self._gpu_freed.clear()


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
