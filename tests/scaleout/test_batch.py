"""Cross-member batching on arq workers: the bot hands a batch to one worker in one arq job, the
worker runs it as one pipeline call, and each member's job still ends, cancels and is paid for on
its own, and a lost worker's batch is re-run whole. The batch's lead (the one member that is the
arq job) cancelled while the batch runs, while it still waits in arq's queue, or in the instant a
worker is handing it to its GPU thread takes nobody else with it; a Redis restart mid-batch, or an
outage across the batch's end, loses no member and costs nobody a try. Real redis-server, real
`python -m generation.worker` processes, tiny twins."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from arq.connections import create_pool
from arq.constants import abort_jobs_ss, in_progress_key_prefix, result_key_prefix
from arq.jobs import deserialize_result
from PIL import Image

from bot.core.jobs import Job, JobState
from generation import failures
from generation.models import ModelSpec
from generation.pipelines import PipelineManager
from generation.scaleout import BATCH_FIELD, ScaleoutSettings, redis_settings
from generation.settings import GenerationSettings
from generation.worker_runtime import WorkerRuntime
from tests.queue.conftest import make_job, wait_for
from tests.scaleout.conftest import HEALTH_CHECK_S, Bot, Cluster
from tests.scaleout.test_scaleout import SLOW, assert_delivered_once, slow_job, until_nothing_is_left_to_run
from tests.scaleout.test_transfer import payload_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

#: the documented tolerance: at most 2/255 per pixel on the tiny twins on CPU
TOLERANCE = 2


async def busy_workers(bot: Bot, registry: dict[str, ModelSpec]) -> list[Job]:
    """Both workers on a slow job, so the jobs queued next wait and leave together."""
    blockers = [slow_job(registry, f"blocker{i}") for i in range(2)]
    for job in blockers:
        await bot.queue.submit(job)
    await wait_for(lambda: len({s[1] for s in bot.starts}) >= 2, 60)
    return blockers


SMALL = {"width": 64, "height": 64}


async def all_complete_once(bot: Bot, jobs: list[Job]) -> None:
    """Every job complete, delivered once, and no copy of any left waiting or running anywhere."""
    for job in jobs:
        done = await bot.recorder.finished(job.id, 90)
        assert done.state is JobState.COMPLETE, done.error
    await until_nothing_is_left_to_run(bot)
    assert_delivered_once(bot, jobs)


async def three_members_queued(
    bot: Bot, registry: dict[str, ModelSpec], word: str, steps: int, *, running: bool = False
) -> list[Job]:
    """Amy's, Ben's and Cat's compatible images queued (one batch), each with its own seed; with
    `running`, once every one of them has reported two steps (the batch is on a GPU)."""
    members = [
        make_job(registry, user, kind="image", prompt=f"{user} {word}", seed=i, steps=steps, **SMALL)
        for i, user in enumerate(("amy", "ben", "cat"))
    ]
    for job in members:
        await bot.queue.submit(job)
    if running:
        progress = bot.recorder.progress
        await wait_for(lambda: all(any(p[0] == j.id and p[1] >= 2 for p in progress) for j in members), 90)
    return members


def pixels(bot: Bot, job: Job) -> np.ndarray:
    result = bot.recorder.results[job.id][0][1]
    assert result is not None
    return np.asarray(Image.open(Path(result.path)).convert("RGB"), dtype=int)


def worker_of(bot: Bot, job: Job) -> str:
    return next(w for _, j, w in bot.starts if j == job.id)


async def arq_queued(bot: Bot) -> list[str]:
    """The bot job ids behind the arq jobs in arq's queue (waiting or running): of a batch, only
    its lead is an arq job; the companions travel inside its payload."""
    redis = bot.executor.redis
    assert redis is not None
    ids = await redis.zrange(bot.executor.keys.queue, 0, -1)
    return [i.decode().split(".")[0] for i in ids]


async def assert_one_try(bot: Bot, jobs: list[Job], batch_size: int | None = None) -> None:
    """Each job started once, on its first try (in a pipeline call of `batch_size` members)."""
    for job in jobs:
        assert [j for _, j, _ in bot.starts].count(job.id) == 1, f"job {job.id} started more than once"
        record = await bot.store.get_job(job.id)
        assert record is not None and record.attempts == 1
        if batch_size is not None:
            assert record.timings.get("batch_size", 1.0) == batch_size


async def in_arq(bot: Bot, jobs: list[Job], within_s: float = 30.0) -> list[Job]:
    """Those of `jobs` that are arq jobs, once there is one."""
    async with asyncio.timeout(within_s):
        while True:
            found = [job for job in jobs if job.id in await arq_queued(bot)]
            if found:
                return found
            await asyncio.sleep(0.02)


async def until_logged(path: Path, text: str, within_s: float = 60.0) -> None:
    """Until a worker's log says `text` (arq logs "← <arq id>" when a job's function returned)."""
    async with asyncio.timeout(within_s):
        while True:
            if text in await asyncio.to_thread(path.read_text, errors="replace"):
                return
            await asyncio.sleep(0.05)


async def results(redis: Any, arq_ids: list[str], within_s: float = 30.0) -> list[dict[str, Any]]:
    """The reports under arq's result keys of `arq_ids`, once all are there."""
    keys = [result_key_prefix + i for i in arq_ids]
    async with asyncio.timeout(within_s):
        while True:
            if await redis.exists(*keys) == len(keys):
                return [deserialize_result(await redis.get(key)).result for key in keys]
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def ghost_worker(cluster: Cluster) -> AsyncIterator[str]:
    """A worker that beats like a live one but never takes a job (its GPU is not there yet): with
    the real workers busy, the bot hands the next batch to arq, where it waits for a free GPU."""
    redis = cluster.redis.client()
    worker_id = f"ghost:{os.getpid()}"
    key, ttl_ms = cluster.keys.worker(worker_id), int(HEALTH_CHECK_S * 4 / 5 * 1000)

    def beat() -> None:
        with redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"id": worker_id, "host": "ghost", "device": "cpu", "busy": 0, "jobs": ""})
            pipe.pexpire(key, ttl_ms)
            pipe.sadd(cluster.keys.workers, worker_id)
            pipe.execute()

    async def beating() -> None:
        while True:  # a worker's heartbeat: every 1/5 of the health-check interval
            await asyncio.to_thread(beat)
            await asyncio.sleep(HEALTH_CHECK_S / 5)

    task = asyncio.create_task(beating())
    try:
        yield worker_id
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        with contextlib.suppress(Exception):
            redis.delete(key)
            redis.srem(cluster.keys.workers, worker_id)
        redis.close()


async def test_two_members_jobs_run_as_one_batch_on_one_worker_with_their_own_pictures(
    bot: Bot, tiny_registry: dict[str, ModelSpec]
) -> None:
    queue, rec = bot.queue, bot.recorder
    blockers = await busy_workers(bot, tiny_registry)
    amy = make_job(tiny_registry, "amy", kind="image", prompt="a red fox", seed=11)
    ben = make_job(tiny_registry, "ben", kind="image", prompt="a blue whale", seed=12)
    for job in (amy, ben):
        await queue.submit(job)
    for job in (amy, ben, *blockers):
        assert (await rec.finished(job.id, 90)).state is JobState.COMPLETE
    assert worker_of(bot, amy) == worker_of(bot, ben)
    for job in (amy, ben):
        record = await bot.store.get_job(job.id)
        assert record is not None and record.timings.get("batch_size") == 2
    batched = {job.id: pixels(bot, job) for job in (amy, ben)}
    # the same requests alone (nothing else queued: batches of one) give the same pictures
    for job in (amy, ben):
        alone = make_job(tiny_registry, job.user_id, kind="image", prompt=job.prompt, seed=job.seed)
        await queue.submit(alone)
        assert (await rec.finished(alone.id, 60)).state is JobState.COMPLETE
        record = await bot.store.get_job(alone.id)
        assert record is not None and "batch_size" not in record.timings
        assert np.abs(pixels(bot, alone) - batched[job.id]).max() <= TOLERANCE


async def test_a_cancel_of_one_members_job_in_a_batch_discards_only_its_result(
    bot: Bot, tiny_registry: dict[str, ModelSpec]
) -> None:
    queue, rec = bot.queue, bot.recorder
    await busy_workers(bot, tiny_registry)
    slow = {"steps": SLOW["steps"], "width": 64, "height": 64}
    amy = make_job(tiny_registry, "amy", kind="image", prompt="a red fox", **slow)
    ben = make_job(tiny_registry, "ben", kind="image", prompt="a blue whale", **slow)
    for job in (amy, ben):
        await queue.submit(job)
    await wait_for(lambda: any(p[0] == ben.id and p[1] >= 2 for p in rec.progress), 90)
    assert worker_of(bot, amy) == worker_of(bot, ben)

    await queue.cancel(ben.id, by_user_id="ben")
    assert (await rec.finished(ben.id, 30)).state is JobState.CANCELLED
    assert rec.results[ben.id][0][1] is None
    done = await rec.finished(amy.id, 60)
    assert done.state is JobState.COMPLETE and rec.results[amy.id][0][1] is not None
    record = await bot.store.get_job(amy.id)
    assert record is not None and record.timings.get("batch_size") == 2
    assert pixels(bot, amy).shape == (64, 64, 3)


async def test_a_worker_lost_mid_batch_reruns_every_job_of_the_batch_once(
    bot: Bot, cluster: Cluster, tiny_registry: dict[str, ModelSpec]
) -> None:
    queue, rec = bot.queue, bot.recorder
    await busy_workers(bot, tiny_registry)
    slow = {"steps": SLOW["steps"], "width": 64, "height": 64}
    members = [
        make_job(tiny_registry, user, kind="image", prompt=f"{user} fox", **slow) for user in ("amy", "ben")
    ]
    for job in members:
        await queue.submit(job)
    await wait_for(lambda: all(any(p[0] == j.id and p[1] >= 2 for p in rec.progress) for j in members), 90)
    victim = worker_of(bot, members[0])
    assert worker_of(bot, members[1]) == victim

    cluster.kill(cluster.by_id(victim).name)
    for job in members:
        done = await rec.finished(job.id, 90)
        assert done.state is JobState.COMPLETE, done.error
        starts = [w for _, j, w in bot.starts if j == job.id]
        assert len(starts) == 2 and starts[1] != victim
        record = await bot.store.get_job(job.id)
        assert record is not None and record.attempts == 2
    await until_nothing_is_left_to_run(bot)
    assert_delivered_once(bot, members)


async def test_a_cancel_of_the_batchs_lead_while_it_runs_leaves_every_companion_its_picture(
    bot: Bot, tiny_registry: dict[str, ModelSpec]
) -> None:
    queue, rec = bot.queue, bot.recorder
    await busy_workers(bot, tiny_registry)
    members = await three_members_queued(bot, tiny_registry, "fox", SLOW["steps"], running=True)
    (lead,) = await in_arq(bot, members)  # the batch is one arq job
    companions = [job for job in members if job is not lead]

    await queue.cancel(lead.id, by_user_id=lead.user_id)
    done = await rec.finished(lead.id, 30)
    assert done.state is JobState.CANCELLED and rec.results[lead.id][0][1] is None
    assert not any(j in rec.results for j in (c.id for c in companions))  # the call goes on for them
    assert max(p[1] for p in rec.progress if p[0] == lead.id) < SLOW["steps"]
    for job in companions:
        finished = await rec.finished(job.id, 60)
        assert finished.state is JobState.COMPLETE, finished.error
        assert pixels(bot, job).shape == (64, 64, 3)
    assert len({worker_of(bot, job) for job in members}) == 1
    await until_nothing_is_left_to_run(bot)
    assert_delivered_once(bot, companions)
    assert len(rec.results[lead.id]) == 1
    await assert_one_try(bot, companions, 3)


async def test_a_cancel_of_the_batchs_lead_waiting_in_arq_hands_the_companions_over_again(
    bot: Bot, cluster: Cluster, tiny_registry: dict[str, ModelSpec]
) -> None:
    queue, rec = bot.queue, bot.recorder
    await busy_workers(bot, tiny_registry)
    # no free GPU: they wait in the bot's queue
    members = await three_members_queued(bot, tiny_registry, "owl", 4)
    async with ghost_worker(cluster) as ghost:
        # the ghost's slot takes the batch into arq's queue, where no GPU is free to start it
        (lead,) = await in_arq(bot, members)
        assert all(j.id in bot.executor._handed for j in members)  # handed over together
        companions = [job for job in members if job is not lead]
        await queue.cancel(lead.id, by_user_id=lead.user_id)
        done = await rec.finished(lead.id, 10)
        assert done.state is JobState.CANCELLED and done.error == failures.CANCELLED_BEFORE_START
        # the companions lost their carrier: they go back to arq as a batch of their own
        assert [j for j in await arq_queued(bot) if j in {m.id for m in members}] == [companions[0].id]
        for job in companions:
            finished = await rec.finished(job.id, 60)
            assert finished.state is JobState.COMPLETE, finished.error
        assert bot.executor.workers_lost == 0 and ghost not in {w for _, _, w in bot.starts}
    assert lead.id not in {j for _, j, _ in bot.starts}
    assert len({worker_of(bot, job) for job in companions}) == 1
    await until_nothing_is_left_to_run(bot)
    assert_delivered_once(bot, companions)
    await assert_one_try(bot, companions, 2)


async def test_redis_restarted_mid_batch_every_member_ends_once(
    bot: Bot, cluster: Cluster, tiny_registry: dict[str, ModelSpec]
) -> None:
    queue, rec = bot.queue, bot.recorder
    pids = {name: w.proc.pid for name, w in cluster.workers.items()}
    blockers = await busy_workers(bot, tiny_registry)
    members = await three_members_queued(bot, tiny_registry, "heron", SLOW["steps"], running=True)
    assert not any(job.id in rec.results for job in members)

    await asyncio.to_thread(cluster.redis.stop, kill=True)  # no goodbye, no persistence: all state gone
    await asyncio.to_thread(cluster.redis.start)

    await all_complete_once(bot, [*blockers, *members])
    # the batch rode the restart out on its worker: one try, one call, nobody re-run
    await assert_one_try(bot, members, 3)
    assert len({worker_of(bot, job) for job in members}) == 1
    assert {name: w.proc.pid for name, w in cluster.workers.items()} == pids
    await wait_for(lambda: len(bot.executor.workers()) == 2, 10)
    # and both sides are connected again: the next job runs
    after = make_job(tiny_registry, "dan", kind="image", prompt="after", steps=2, width=64, height=64)
    await queue.submit(after)
    assert (await rec.finished(after.id, 30)).state is JobState.COMPLETE


async def test_redis_down_until_the_batch_has_ended_reruns_it_and_each_member_ends_once(
    bot: Bot, cluster: Cluster, tiny_registry: dict[str, ModelSpec]
) -> None:
    blockers = await busy_workers(bot, tiny_registry)
    members = await three_members_queued(bot, tiny_registry, "crane", 12, running=True)
    (lead,) = await in_arq(bot, members)
    worker = cluster.by_id(worker_of(bot, lead))

    await asyncio.to_thread(cluster.redis.stop, kill=True)
    # the worker ends the call and reports into a Redis that is not there: the lead's result is
    # lost (its companions' too, unless Redis is back before they are encoded)
    await until_logged(worker.log_path, f"← {lead.id}")
    await asyncio.to_thread(cluster.redis.start)

    await all_complete_once(bot, [*blockers, *members])
    # the lead's arq job ran twice (its first result went nowhere); its companions went with it
    runs = sum(w.log_path.read_text(errors="replace").count(f"← {lead.id}") for w in cluster.workers.values())
    assert runs == 2 and bot.executor.reenqueued >= 1
    await assert_one_try(bot, members)  # a restart costs nobody a try
    for job in members:
        if job is not lead:
            record = await bot.store.get_job(job.id)
            assert record is not None and record.timings.get("batch_size") == 3


async def test_a_lead_cancelled_while_its_batch_is_handed_to_the_gpu_still_runs_its_companions(
    cluster: Cluster,
    tiny_settings: GenerationSettings,
    tiny_registry: dict[str, ModelSpec],
    isolated_pipeline_manager: PipelineManager,
) -> None:
    """arq's abort of the lead can land in the instant between a worker taking the batch and the
    GPU thread holding it; the companions must still run and end (a worker in this process, so
    that the abort lands exactly there)."""
    cluster.ensure()
    overrides = {"queue_url": cluster.redis.url, "queue_name": "inproc", "worker_name": "inproc"}
    settings = ScaleoutSettings(_env_file=None, **{**tiny_settings.model_dump(), **overrides})  # type: ignore[arg-type]
    rt = WorkerRuntime(settings=settings, manager_factory=lambda: isolated_pipeline_manager, preload=())
    redis = await create_pool(redis_settings(cluster.redis.url))
    await rt.startup({"redis": redis})
    try:
        jobs = [
            make_job(
                tiny_registry, user, kind="image", prompt=f"{user} wren", seed=i, steps=2, width=64, height=64
            )
            for i, user in enumerate(("amy", "ben", "cat"))
        ]
        ids = [f"{job.id}.1.1" for job in jobs]
        raw = payload_for(jobs[0]).to_dict()
        raw[BATCH_FIELD] = [
            {"arq_id": i, "payload": payload_for(j).to_dict()} for i, j in zip(ids[1:], jobs[1:], strict=True)
        ]
        run = asyncio.create_task(rt.run(ids[0], raw))
        await asyncio.sleep(0)  # the batch is being handed over: its first wait on Redis
        assert not run.done()
        run.cancel()  # what arq does with an abort of the lead
        assert (await run)["status"] == "cancelled"  # the lead left the call, as at any step
        rt.task_ended(ids[0])  # what GatedWorker does when arq is done with the lead
        for report in await results(redis, ids[1:]):
            assert report["status"] == "complete" and report["media"] and report["batch_size"] >= 2
        await wait_for(lambda: not rt.jobs, 10)  # the worker holds nobody any more
    finally:
        await rt.shutdown({})
        await redis.aclose()


async def test_a_lead_aborted_as_a_worker_takes_it_leaves_its_companions_to_run_on_their_first_try(
    bot: Bot, cluster: Cluster, tiny_registry: dict[str, ModelSpec]
) -> None:
    queue, rec = bot.queue, bot.recorder
    await busy_workers(bot, tiny_registry)
    members = await three_members_queued(bot, tiny_registry, "lark", 4)
    redis = bot.executor.redis
    assert redis is not None
    async with ghost_worker(cluster):
        (lead,) = await in_arq(bot, members)
        companions = [job for job in members if job is not lead]
        (lead_arq_id,) = [i.decode() for i in await redis.zrange(bot.executor.keys.queue, 0, -1)
                          if i.decode().startswith(f"{lead.id}.")]  # fmt: skip
        # the instant a worker takes the lead (arq marks it in progress), its member cancels it:
        # the bot can no longer take it back, so it asks arq to abort it
        await redis.set(in_progress_key_prefix + lead_arq_id, b"1")
        await queue.cancel(lead.id, by_user_id=lead.user_id)
        assert await redis.zscore(abort_jobs_ss, lead_arq_id) is not None
        await redis.delete(in_progress_key_prefix + lead_arq_id)
        # arq aborts the lead before its function starts: the companions never ran with it
        assert (await rec.finished(lead.id, 60)).state is JobState.CANCELLED
        for job in companions:
            finished = await rec.finished(job.id, 60)
            assert finished.state is JobState.COMPLETE, finished.error
        assert bot.executor.workers_lost == 0
    assert lead.id not in {j for _, j, _ in bot.starts}
    await until_nothing_is_left_to_run(bot)
    assert_delivered_once(bot, companions)
    await assert_one_try(bot, companions)
