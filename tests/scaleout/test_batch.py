"""Cross-member batching on arq workers: the bot hands a batch to one worker in one arq job, the
worker runs it as one pipeline call, and each member's job still ends, cancels and is paid for on
its own, and a lost worker's batch is re-run whole. Real redis-server, real
`python -m generation.worker` processes, tiny twins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.core.jobs import Job, JobState
from generation.models import ModelSpec
from tests.queue.conftest import make_job, wait_for
from tests.scaleout.conftest import Bot, Cluster
from tests.scaleout.test_scaleout import SLOW, assert_delivered_once, slow_job, until_nothing_is_left_to_run

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


def pixels(bot: Bot, job: Job) -> np.ndarray:
    result = bot.recorder.results[job.id][0][1]
    assert result is not None
    return np.asarray(Image.open(Path(result.path)).convert("RGB"), dtype=int)


def worker_of(bot: Bot, job: Job) -> str:
    return next(w for _, j, w in bot.starts if j == job.id)


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
