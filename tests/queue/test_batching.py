"""Cross-member batching through the real queue, in-process executor and tiny twins: who may
join the next job's call (fair order kept), the 1/N charge, and a cancel inside a batch."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from bot.core import metrics
from bot.core.fair_order import batch_companions
from bot.core.jobs import Job, JobState
from bot.core.store.base import Store
from generation.outputs import StepInfo
from tests.queue.conftest import make_job
from tests.queue.test_queue import Gate, hooks  # noqa: F401  (the fixture)

log = logging.getLogger(__name__)

pytestmark = pytest.mark.timeout(90)


class StepGate:
    """Holds the first step of a run with `total` steps until opened."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self, info: StepInfo) -> None:
        if info.total == self.total and not self.entered.is_set():
            self.entered.set()
            self.opened.wait(20)

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 30), "the gated run never reached a step"


def _key(job: Job) -> tuple[object, ...]:
    return (job.kind, job.params.get("steps"))


def test_companions_keep_each_members_order_and_the_limit(tiny_registry) -> None:
    head = make_job(tiny_registry, "amy", kind="image")
    bob_video = make_job(tiny_registry, "bob")
    bob_image = make_job(tiny_registry, "bob", kind="image")
    cat = make_job(tiny_registry, "cat", kind="image")
    dan = make_job(tiny_registry, "dan", kind="image")
    amy_again = make_job(tiny_registry, "amy", kind="image")
    following = [bob_video, cat, bob_image, amy_again, dan]
    chosen = batch_companions(head, following, limit=3, key=_key)
    # bob's image may not jump his earlier video; the limit stops at three
    assert chosen == [cat, amy_again, dan]
    assert batch_companions(head, following, limit=1, key=_key) == [cat]
    assert batch_companions(head, following, limit=0, key=_key) == []
    assert batch_companions(head, following, limit=3, key=lambda j: None) == []


async def test_compatible_jobs_of_several_members_share_one_call_in_fair_order(
    sqlite_store: Store,
    start_queue,
    tiny_registry,
    hooks,  # noqa: F811
) -> None:
    queue, rec = await start_queue(sqlite_store)
    gate = hooks(Gate())
    blocker = await queue.submit(make_job(tiny_registry, "zed", steps=4))
    await gate.wait_entered()
    before = _histogram()
    amy = await queue.submit(make_job(tiny_registry, "amy", kind="image", seed=1))
    bob_video = await queue.submit(make_job(tiny_registry, "bob"))
    bob_image = await queue.submit(make_job(tiny_registry, "bob", kind="image", seed=2))
    cat = await queue.submit(make_job(tiny_registry, "cat", kind="image", seed=3))
    dan = await queue.submit(make_job(tiny_registry, "dan", kind="image", seed=4, steps=3))
    gate.opened.set()
    ids = [s.job.id for s in (blocker, amy, bob_video, bob_image, cat, dan)]
    done = {i: await rec.finished(i, within_s=60) for i in ids}
    assert all(job.state is JobState.COMPLETE for job in done.values())

    # amy leads, cat joins her call; bob's image waits behind his video, dan's steps differ
    batched = {i for i, job in done.items() if job.timings.get("batch_size", 1) > 1}
    assert batched == {amy.job.id, cat.job.id}
    assert done[bob_video.job.id].started_at <= done[bob_image.job.id].started_at
    assert done[cat.job.id].started_at <= done[bob_video.job.id].started_at
    # each member of the call is charged half of it
    a, c = done[amy.job.id], done[cat.job.id]
    assert a.gpu_seconds == pytest.approx(c.gpu_seconds) and a.gpu_seconds > 0
    after = _histogram()
    assert after[1] - before[1] == 1  # one call of more than one job
    assert after[0] - before[0] == 4  # amy+cat, bob's video, bob's image, dan's image


async def test_a_member_cancelled_inside_a_batch_ends_at_once_and_the_rest_complete(
    sqlite_store: Store,
    start_queue,
    tiny_registry,
    hooks,  # noqa: F811
) -> None:
    queue, rec = await start_queue(sqlite_store)
    first = hooks(Gate())
    blocker = await queue.submit(make_job(tiny_registry, "zed", steps=4))
    await first.wait_entered()
    inside = hooks(StepGate(total=3))
    jobs = [
        await queue.submit(make_job(tiny_registry, user, kind="image", seed=i, steps=3))
        for i, user in enumerate(("amy", "bob", "cat"))
    ]
    first.opened.set()
    await inside.wait_entered()  # the batch of three is on its first step
    await queue.cancel(jobs[1].job.id, by_user_id="bob")
    # bob's job ends while the call is still held: nobody waits for the call to end
    assert (await rec.finished(jobs[1].job.id)).state is JobState.CANCELLED
    assert not inside.opened.is_set()
    inside.opened.set()
    for sub in (jobs[0], jobs[2]):
        job = await rec.finished(sub.job.id, within_s=60)
        assert job.state is JobState.COMPLETE and job.timings["batch_size"] == 3
    assert (await rec.finished(blocker.job.id)).state is JobState.COMPLETE
    assert not [p for p in rec.progress if p[0] == jobs[1].job.id and p[1] > 1]


def _histogram() -> tuple[float, float]:
    """imagine_batch_size: (calls observed, calls of more than one job)."""
    samples = {(s.name, s.labels.get("le")): s.value for m in metrics.BATCH_SIZE.collect() for s in m.samples}
    total = samples[("imagine_batch_size_count", None)]
    return total, total - samples[("imagine_batch_size_bucket", "1.0")]
