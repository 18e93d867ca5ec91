"""Scale-out with real parts: a JobQueue on the arq executor, a real redis-server, and two
`python -m generation.worker` processes on the tiny twins.

Stories: a burst from three members is shared by both workers in the scheduler's fair order, with
arq's own queue never deeper than the free GPUs; a worker SIGKILLed mid-job is noticed within its
health-check interval and the job completes on the other worker, delivered once; a member cancels
a job running on a worker; Redis restarts mid-burst and nothing is lost or delivered twice; the bot
starts while Redis is down and runs its jobs once Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from pathlib import Path

import pytest

from bot.core import metrics
from bot.core.arq_executor import ArqExecutor
from bot.core.jobs import Job, JobState
from bot.core.queue import JobQueue
from bot.core.store.sqlite import SQLiteStore
from generation.models import ModelSpec
from generation.phases import JobPhase
from generation.settings import GenerationSettings
from tests.queue.conftest import Recorder, make_job, queue_settings, wait_for
from tests.scaleout.conftest import HEALTH_CHECK_S, Bot, Cluster

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

#: ~2 s on one CPU thread: long enough to kill or cancel mid-run, short enough to re-run
SLOW = {"steps": 50, "frames": 16, "width": 64, "height": 64}


def slow_job(registry: dict[str, ModelSpec], user: str) -> Job:
    return make_job(registry, user, prompt=f"{user} slow", **SLOW)


#: (jobs in arq's queue no worker has started, jobs in it at all), read atomically
DEPTH_LUA = """
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local waiting = 0
for _, id in ipairs(ids) do
  if redis.call('EXISTS', 'arq:in-progress:' .. id) == 0 then waiting = waiting + 1 end
end
return {waiting, #ids}
"""


async def arq_depth(bot: Bot) -> tuple[int, int]:
    """(jobs waiting in arq's queue for a GPU, jobs in it at all) as Redis sees it now."""
    redis = bot.executor.redis
    assert redis is not None
    waiting, total = await redis.eval(DEPTH_LUA, 1, bot.executor.keys.queue)
    return int(waiting), int(total)


async def until_nothing_is_left_to_run(bot: Bot, within_s: float = 30.0) -> None:
    """Until arq's queue is empty: a job stays in it while a worker runs it and leaves it when done,
    so from then on no copy of any job is waiting or running anywhere to be delivered later."""
    redis = bot.executor.redis
    assert redis is not None
    async with asyncio.timeout(within_s):
        while True:
            if not await redis.zcard(bot.executor.keys.queue):
                return
            await asyncio.sleep(0.05)


def assert_delivered_once(bot: Bot, jobs: list[Job]) -> None:
    for job in jobs:
        events = bot.recorder.results.get(job.id, [])
        assert len(events) == 1, f"job {job.id} finished {len(events)} times"
        done, result = events[0]
        assert done.state is JobState.COMPLETE, done.error
        assert result is not None and Path(result.path).stat().st_size == result.size_bytes > 0
    paths = [bot.recorder.results[j.id][0][1].path for j in jobs]  # type: ignore[union-attr]
    assert len(set(paths)) == len(paths)


async def test_burst_from_three_users_is_shared_by_both_workers_in_fair_order(
    bot: Bot, cluster: Cluster, tiny_registry: dict[str, ModelSpec]
) -> None:
    queue, rec = bot.queue, bot.recorder
    # one job per pipeline call: this story is the fair order across workers (bob's two images
    # would rightly share a call and start early; batches on workers are tests/scaleout/test_batch.py)
    bot.settings.batch_max_images = 1
    assert len(bot.executor.workers()) == 2 and bot.executor.free_slots() == 2
    # both GPUs busy, so the burst waits in the scheduler, where fairness is decided
    blockers = [
        make_job(tiny_registry, user, steps=10, frames=8, width=64, height=64) for user in ("zed", "yan")
    ]
    for job in blockers:
        await queue.submit(job)
    await wait_for(lambda: len(bot.starts) == 2, 30)
    assert bot.executor.free_slots() == 0

    users = ["alice", "alice", "bob", "alice", "carol", "bob", "carol"]
    # long enough (a few tenths of a second each) that both workers get a share, whichever
    # blocker ends first
    burst = [
        make_job(tiny_registry, user, kind="image" if i % 3 == 2 else "video", prompt=f"{user} {i}", steps=12)
        for i, user in enumerate(users)
    ]
    for job in burst:
        await queue.submit(job)
    a1, a2, b1, a3, c1, b2, c2 = (j.id for j in burst)
    fair = [a1, b1, c1, a2, b2, c2, a3]
    assert [e.job.id for e in queue.snapshot().queued] == fair
    assert (await arq_depth(bot))[0] == 0  # nothing waits in arq: the burst is all in the scheduler

    deepest = [0, 0]

    async def sample() -> None:
        while True:
            waiting, total = await arq_depth(bot)
            deepest[0], deepest[1] = max(deepest[0], waiting), max(deepest[1], total)
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        for job in blockers + burst:
            assert (await rec.finished(job.id, 60)).state is JobState.COMPLETE
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)

    started = [job_id for _, job_id, _ in bot.starts if job_id in fair]
    assert sorted(started) == sorted(fair)
    # two workers race for adjacent jobs, so a job may start one place early or late, never more
    for job_id in fair:
        assert abs(started.index(job_id) - fair.index(job_id)) <= 1, (started, fair)
    ran_on = {worker for _, job_id, worker in bot.starts if job_id in fair}
    assert ran_on == {w.worker_id for w in cluster.workers.values()}
    # arq's queue stayed shallow: never more jobs waiting there than GPUs; besides those, each
    # worker holds at most one job on its GPU and one being encoded
    assert deepest[0] <= 2 and deepest[1] <= 2 + 2 * 2, deepest
    assert_delivered_once(bot, blockers + burst)
    for job in blockers + burst:
        record = await bot.store.get_job(job.id)
        assert record is not None and record.attempts == 1 and record.gpu_seconds


async def test_a_gpu_about_to_finish_gets_its_next_job_early_and_runs_it_after(
    bot: Bot, cluster: Cluster, tiny_registry: dict[str, ModelSpec]
) -> None:
    queue, rec = bot.queue, bot.recorder
    bot.settings.batch_max_images = 1
    gpu_done: dict[str, float] = {}
    job_gpu_done = queue.job_gpu_done

    def spy_gpu_done(job_id: str) -> None:
        gpu_done.setdefault(job_id, time.monotonic())
        job_gpu_done(job_id)

    queue.job_gpu_done = spy_gpu_done  # type: ignore[method-assign]
    handed: list[tuple[float, dict[str, tuple[JobPhase, bool]], int]] = []
    execute_batch = bot.executor.execute_batch

    async def spy_handover(jobs: list[Job]) -> None:
        seen = {h.job.id: (h.phase, h.ending) for h in bot.executor._handed.values()}
        handed.append((time.monotonic(), seen, len(gpu_done)))
        await execute_batch(jobs)

    bot.executor.execute_batch = spy_handover  # type: ignore[method-assign]
    first = [slow_job(tiny_registry, user) for user in ("kim", "lou")]
    for job in first:
        await queue.submit(job)
    await wait_for(lambda: len(bot.starts) == 2, 30)
    follow = slow_job(tiny_registry, "max")
    await queue.submit(follow)
    # both GPUs are early in their jobs: the next one waits in the fair order, not in arq
    assert [e.job.id for e in queue.snapshot().queued] == [follow.id]
    assert (await arq_depth(bot))[0] == 0

    await wait_for(lambda: len(handed) == 3, 30)
    when, seen, freed_before = handed[2]
    # handed over while both first jobs were still on their GPUs, one of them said to end soon
    assert {seen[j.id][0] for j in first} == {JobPhase.RUNNING} and freed_before == 0, seen
    assert any(seen[j.id][1] for j in first), seen
    for job in [*first, follow]:
        assert (await rec.finished(job.id, 60)).state is JobState.COMPLETE
    # ... and started only once a GPU was done with its job: never two jobs on one GPU
    (started_at, _, worker), *_ = [s for s in bot.starts if s[1] == follow.id]
    freed = [gpu_done[j.id] for j in first if next(s for s in bot.starts if s[1] == j.id)[2] == worker]
    assert freed and started_at >= min(freed)
    log.info("next job handed over %.2fs before its GPU was free", min(gpu_done.values()) - when)
    assert_delivered_once(bot, [*first, follow])


async def test_info_and_metrics_show_each_worker_with_its_host_device_and_work(
    bot: Bot, cluster: Cluster, tiny_registry: dict[str, ModelSpec]
) -> None:
    # two jobs at once on two idle workers, each long enough that neither worker gets both
    jobs = [slow_job(tiny_registry, user) for user in ("uma", "vic")]
    for job in jobs:
        await bot.queue.submit(job)
    for job in jobs:
        assert (await bot.recorder.finished(job.id, 60)).state is JobState.COMPLETE
    assert {worker for _, _, worker in bot.starts} == {w.worker_id for w in cluster.workers.values()}

    # /info and /metrics: each worker with host, device, busy/idle, jobs done and heartbeat
    await wait_for(lambda: all(w.jobs_done > 0 and not w.busy for w in bot.executor.workers()), 10)
    now = time.time()
    for info in bot.executor.workers():
        assert info.host == socket.gethostname() and info.device == "cpu" and info.alive
        assert info.last_heartbeat is not None and now - info.last_heartbeat.timestamp() < HEALTH_CHECK_S
        assert not info.busy and info.job_id is None
        assert "tiny-image: sdpa · fused QKV · channels_last" in info.tuning  # from the worker's beat
    assert bot.executor.models_loaded() == ""
    text = metrics.render().decode()
    for worker in cluster.workers.values():
        wid = re.escape(worker.worker_id)
        assert re.search(rf'imagine_worker_info\{{device="cpu",host="[^"]+",worker="{wid}"\}} 1', text)
        assert re.search(rf'imagine_worker_jobs_done\{{worker="{wid}"\}} [1-9]', text)
        assert re.search(rf'imagine_worker_busy\{{worker="{wid}"\}} 0', text)
    assert "imagine_workers_live 2.0" in text


async def test_sigkill_of_a_worker_mid_job_reruns_it_once_on_the_other(
    bot: Bot, cluster: Cluster, tiny_registry: dict[str, ModelSpec]
) -> None:
    queue, rec = bot.queue, bot.recorder
    job = slow_job(tiny_registry, "dora")
    await queue.submit(job)
    await wait_for(lambda: any(p[0] == job.id and p[1] >= 3 for p in rec.progress), 30)
    (_, _, first_worker), *_ = [s for s in bot.starts if s[1] == job.id]
    victim = cluster.by_id(first_worker)

    killed_at = time.monotonic()
    cluster.kill(victim.name)
    done = await rec.finished(job.id, 60)

    assert done.state is JobState.COMPLETE, done.error
    starts = [s for s in bot.starts if s[1] == job.id]
    assert len(starts) == 2 and starts[1][2] != first_worker
    noticed_s = starts[1][0] - killed_at
    log.info("lost worker noticed and its job restarted elsewhere %.2fs after SIGKILL", noticed_s)
    assert noticed_s <= HEALTH_CHECK_S + 1.0
    record = await bot.store.get_job(job.id)
    assert record is not None and record.attempts == 2
    assert bot.executor.workers_lost >= 1
    assert [w.id for w in bot.executor.workers()] == [cluster.workers[n].worker_id for n in cluster.names
                                                      if cluster.workers[n].alive]  # fmt: skip
    # the dead worker's copy never comes back: nothing else is delivered
    await until_nothing_is_left_to_run(bot)
    assert_delivered_once(bot, [job])


async def test_cancel_of_a_job_running_on_a_worker(
    bot: Bot, cluster: Cluster, tiny_registry: dict[str, ModelSpec]
) -> None:
    queue, rec = bot.queue, bot.recorder
    job = slow_job(tiny_registry, "erin")
    await queue.submit(job)
    await wait_for(lambda: any(p[0] == job.id and p[1] >= 2 for p in rec.progress), 30)
    (_, _, worker_id), *_ = [s for s in bot.starts if s[1] == job.id]

    await queue.cancel(job.id, by_user_id="erin")
    done = await rec.finished(job.id, 20)

    assert done.state is JobState.CANCELLED
    last_step = max(p[1] for p in rec.progress if p[0] == job.id)
    assert last_step < SLOW["steps"]  # stopped at a step, short of the end
    # progress came from the worker through Redis, latent previews included
    previews = [p[3] for p in rec.progress if p[0] == job.id and p[3]]
    assert previews and all(png.startswith(b"\x89PNG") for png in previews)
    assert rec.results[job.id][0][1] is None
    record = await bot.store.get_job(job.id)
    assert record is not None and record.state is JobState.CANCELLED and record.result_path is None
    # the worker is still there and serving
    assert cluster.by_id(worker_id).alive
    follow = [make_job(tiny_registry, "erin", prompt=f"again {i}") for i in range(2)]
    for job in follow:
        await queue.submit(job)
    for job in follow:
        assert (await rec.finished(job.id, 30)).state is JobState.COMPLETE


async def test_redis_restarted_mid_burst_loses_nothing_and_delivers_nothing_twice(
    bot: Bot, cluster: Cluster, tiny_registry: dict[str, ModelSpec]
) -> None:
    queue, rec = bot.queue, bot.recorder
    pids = {name: w.proc.pid for name, w in cluster.workers.items()}
    users = ["ann", "ben", "cat"] * 4
    jobs = [
        make_job(tiny_registry, user, prompt=f"{user} {i}", seed=i, steps=8, frames=4)
        for i, user in enumerate(users)
    ]
    for job in jobs:
        await queue.submit(job)
    await wait_for(lambda: len(rec.results) >= 3, 60)

    await asyncio.to_thread(cluster.redis.stop, kill=True)  # no goodbye, no persistence: all state gone
    await asyncio.sleep(1.0)
    await asyncio.to_thread(cluster.redis.start)

    for job in jobs:
        done = await rec.finished(job.id, 90)
        assert done.state is JobState.COMPLETE, done.error
    await until_nothing_is_left_to_run(bot)
    assert_delivered_once(bot, jobs)
    # a Redis restart costs no try, and the workers rode it out with their models loaded
    for job in jobs:
        record = await bot.store.get_job(job.id)
        assert record is not None and record.attempts == 1
    assert {name: w.proc.pid for name, w in cluster.workers.items()} == pids
    assert all(w.alive for w in cluster.workers.values())
    await wait_for(lambda: len(bot.executor.workers()) == 2, 10)
    log.info("jobs re-enqueued after the restart: %d", bot.executor.reenqueued)


async def test_bot_started_while_redis_is_down_runs_jobs_once_it_is_back(
    cluster: Cluster, tiny_settings: GenerationSettings, tiny_registry: dict[str, ModelSpec], tmp_path: Path
) -> None:
    cluster.ensure()
    await asyncio.to_thread(cluster.redis.stop)
    settings = queue_settings(
        tiny_settings, tmp_path, queue_url=cluster.redis.url, worker_health_check_s=HEALTH_CHECK_S
    )
    store = SQLiteStore(path=tmp_path / "bot.db")
    await store.open()
    queue = JobQueue(settings=settings, store=store, executor=ArqExecutor(settings=settings))
    rec = Recorder()
    queue.add_listener(rec)
    try:
        await queue.start()  # returns with Redis still down: it does not wait for it
        assert queue.workers() == [] and queue.executor.free_slots() == 0
        assert "unreachable" in queue.executor.models_loaded()  # type: ignore[attr-defined]
        job = make_job(tiny_registry, "hal")
        assert (await queue.submit(job)).position == 1  # accepted and kept in the store meanwhile
        await asyncio.to_thread(cluster.redis.start)
        done = await rec.finished(job.id, 60)
        assert done.state is JobState.COMPLETE and len(rec.results[job.id]) == 1
        assert len(queue.workers()) == 2  # the workers rode the outage out and came back
    finally:
        await queue.stop(graceful=False, timeout_s=5.0)
        await store.close()


def test_worker_process_refuses_to_start_without_queue_url(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("QUEUE_URL",)}
    done = subprocess.run(
        [sys.executable, "-m", "generation.worker"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "QUEUE_URL is not set" in done.stderr
