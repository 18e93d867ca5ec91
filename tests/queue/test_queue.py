"""The queue with the real store and the tiny twins: fairness, positions and ETAs, cancel,
limits, pause, timeouts, the step watchdog, CUDA OOM fallback and restart recovery."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

from bot.core.costs import CostModel, cost_key
from bot.core.inprocess import InProcessExecutor
from bot.core.jobs import JobState, utcnow
from bot.core.queue import (
    REDELIVER_WINDOW,
    AlreadyFinished,
    Banned,
    JobNotFound,
    JobQueue,
    NotAllowed,
    QueueFull,
    QueuePaused,
    QuotaExceeded,
    TooManyQueued,
)
from bot.core.store.base import Store
from bot.core.store.testing import mongomock_store
from generation.models import ModelSpec
from generation.pipelines import PipelineManager, StepInfo
from generation.settings import GenerationSettings
from tests.queue.conftest import make_job, queue_settings, wait_for

pytestmark = pytest.mark.timeout(60)


class Gate:
    """A step hook that holds the first step it sees until the test opens the gate."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self._armed = True

    def __call__(self, info: StepInfo) -> None:
        if self._armed:
            self._armed = False
            self.entered.set()
            self.opened.wait(20)

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 20), "the gated job never reached a step"


@pytest.fixture
def hooks(pipeline_manager: PipelineManager) -> Iterator[Callable[..., object]]:
    """Install step hooks on a manager (the shared one by default); removed after the test."""
    installed: list[tuple[PipelineManager, object]] = []

    def install(hook: object, manager: PipelineManager | None = None) -> object:
        target = manager or pipeline_manager
        target.step_hooks.append(hook)  # type: ignore[arg-type]
        installed.append((target, hook))
        return hook

    yield install
    for manager, hook in installed:
        if hasattr(hook, "opened"):
            hook.opened.set()  # type: ignore[attr-defined]
        manager.step_hooks.remove(hook)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "mongomock"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Both drivers, for the tests that are cheap enough to run twice."""
    from bot.core.store.sqlite import SQLiteStore

    st: Store = SQLiteStore(path=tmp_path / "bot.db") if request.param == "sqlite" else mongomock_store()
    await st.open()
    yield st
    if request.param == "sqlite":
        await st.close()


async def test_interleaved_burst_runs_round_robin_with_positions_and_etas(
    store: Store, start_queue, tiny_registry: dict[str, ModelSpec], hooks
) -> None:
    # a store that answers slowly widens every await in dispatch (the ban check at claim
    # among them), so positions sampled meanwhile show any moment the fair order is half-updated
    get_user = store.get_user

    async def slow_get_user(user_id: str) -> Any:
        await asyncio.sleep(0.02)
        return await get_user(user_id)

    store.get_user = slow_get_user  # type: ignore[method-assign]
    queue, rec = await start_queue(store)
    gate = hooks(Gate())
    blocker = await queue.submit(make_job(tiny_registry, "zed"))
    await gate.wait_entered()
    assert queue.position(blocker.job.id) == 0

    users = ["alice", "alice", "bob", "alice", "carol", "bob", "carol"]
    subs = [
        await queue.submit(make_job(tiny_registry, user, prompt=f"{user} {i}"))
        for i, user in enumerate(users)
    ]
    # a newcomer goes ahead of a member's second job: alice's 2nd is overtaken by bob's and carol's 1st
    assert [s.position for s in subs] == [1, 2, 2, 4, 3, 5, 6]
    a1, a2, b1, a3, c1, b2, c2 = (s.job.id for s in subs)
    fair = [a1, b1, c1, a2, b2, c2, a3]
    snap = queue.snapshot()
    assert [e.job.id for e in snap.running] == [blocker.job.id]
    assert [e.job.id for e in snap.queued] == fair
    assert [e.position for e in snap.queued] == [1, 2, 3, 4, 5, 6, 7]
    etas = [e.eta_s for e in snap.queued]
    assert all(later > earlier for earlier, later in itertools.pairwise(etas))
    assert queue.eta_s(a3) == pytest.approx(etas[-1], rel=0.05)
    # nothing measured yet: the ETA is the prior (about a second per tiny job), not zero
    assert not queue.costs.measured(subs[0].job.params)
    first_eta = queue.eta_s(a3)
    assert first_eta is not None and first_eta > 5 * 0.5

    seen: list[tuple[int | None, float | None]] = []

    async def sample() -> None:
        while queue.position(a3) not in (0, None):
            seen.append((queue.position(a3), queue.eta_s(a3)))
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    gate.opened.set()
    for job_id in [blocker.job.id, *fair]:
        assert (await rec.finished(job_id)).state is JobState.COMPLETE
    await sampler
    assert rec.started == [blocker.job.id, *fair]
    positions = [p for p, _ in seen]
    assert positions == sorted(positions, reverse=True) and positions[-1] == 1
    assert len(set(positions)) >= 4  # it really moved up as jobs finished
    # ETA shrinks as jobs ahead finish and as the cost model learns the real (much smaller) cost
    assert queue.costs.measured(subs[0].job.params)
    assert seen[-1][1] is not None and seen[-1][1] < first_eta / 3
    measured = [(await store.get_job(j)).gpu_seconds for j in [blocker.job.id, *fair]]  # type: ignore[union-attr]
    learned = queue.costs.estimate(subs[0].job.params)
    assert min(measured) <= learned <= max(measured)  # type: ignore[type-var]
    # persisted through the store's meta for the next start (at the latest when the queue stops)
    await queue.stop()
    again = CostModel()
    await again.load(store)
    assert again.estimate(subs[0].job.params) == pytest.approx(learned)
    done = await store.get_job(a3)
    assert done is not None
    assert done.attempts == 1 and done.result_path and await asyncio.to_thread(Path(done.result_path).exists)
    assert done.queue_wait_s is not None and done.queue_wait_s > 0


async def test_cancel_queued_and_running(store: Store, start_queue, tiny_registry, hooks) -> None:
    queue, rec = await start_queue(store)
    gate = hooks(Gate())
    running = await queue.submit(make_job(tiny_registry, "alice"))
    await gate.wait_entered()
    queued = await queue.submit(make_job(tiny_registry, "bob"))
    later = await queue.submit(make_job(tiny_registry, "carol"))
    assert queue.position(later.job.id) == 2

    with pytest.raises(NotAllowed):
        await queue.cancel(queued.job.id, by_user_id="alice")
    with pytest.raises(JobNotFound):
        await queue.cancel("nope", by_user_id="alice")
    cancelled = await queue.cancel(queued.job.id, by_user_id="bob")
    assert cancelled.state is JobState.CANCELLED
    assert queue.position(queued.job.id) is None
    assert queue.position(later.job.id) == 1
    stored = await store.get_job(queued.job.id)
    assert stored is not None and stored.state is JobState.CANCELLED

    # an admin stops the running job: it takes effect at the next step
    stopping = await queue.cancel(running.job.id, by_user_id="mod", is_admin=True)
    assert stopping.state is JobState.IN_PROGRESS and stopping.cancel_requested
    gate.opened.set()
    ended = await rec.finished(running.job.id)
    assert ended.state is JobState.CANCELLED and ended.result_path is None
    # the worker goes on with the next job
    assert (await rec.finished(later.job.id)).state is JobState.COMPLETE
    with pytest.raises(AlreadyFinished):
        await queue.cancel(later.job.id, by_user_id="carol")
    assert rec.results[queued.job.id][0][0].state is JobState.CANCELLED


async def test_per_member_and_global_limits_and_an_admins_override(
    sqlite_store: Store, start_queue, tiny_registry, hooks
) -> None:
    store = sqlite_store
    queue, _ = await start_queue(store, max_queued_per_user=2, max_queue=4)
    hooks(Gate())  # the first job holds the worker, so everything after it waits
    await queue.submit(make_job(tiny_registry, "zed"))
    await queue.submit(make_job(tiny_registry, "alice"))
    await queue.submit(make_job(tiny_registry, "alice"))
    with pytest.raises(TooManyQueued) as too_many:
        await queue.submit(make_job(tiny_registry, "alice"))
    assert "limit is 2" in too_many.value.message
    await store.set_user_quota("alice", max_queued=3, daily_gpu_seconds=None)  # an admin's override
    await queue.submit(make_job(tiny_registry, "alice"))
    await queue.submit(make_job(tiny_registry, "bob"))
    with pytest.raises(QueueFull):
        await queue.submit(make_job(tiny_registry, "carol"))


async def test_a_banned_member_is_refused_with_the_reason(
    sqlite_store: Store, start_queue, tiny_registry
) -> None:
    queue, rec = await start_queue(sqlite_store)
    await sqlite_store.set_ban("mallory", banned=True, reason="spam", by="mod")
    with pytest.raises(Banned) as banned:
        await queue.submit(make_job(tiny_registry, "mallory"))
    assert "spam" in banned.value.message
    assert queue.snapshot().queued == [] and rec.events == []


async def test_the_daily_gpu_quota_counts_todays_use_and_an_override_lifts_it(
    sqlite_store: Store, start_queue, tiny_registry
) -> None:
    store = sqlite_store
    queue, rec = await start_queue(store, daily_gpu_seconds_per_user=600)
    used = make_job(tiny_registry, "dave")
    used.state, used.gpu_seconds, used.created_at = JobState.COMPLETE, 700.0, utcnow()
    await store.insert_job(used)
    assert (await store.user_usage("dave", since=utcnow() - timedelta(hours=1))).gpu_seconds == 700.0
    with pytest.raises(QuotaExceeded) as quota:
        await queue.submit(make_job(tiny_registry, "dave"))
    assert "10 GPU minutes" in quota.value.message and "00:00 UTC" in quota.value.message
    await store.set_user_quota("dave", max_queued=None, daily_gpu_seconds=3600)
    dave = await queue.submit(make_job(tiny_registry, "dave"))
    assert (await rec.finished(dave.job.id)).state is JobState.COMPLETE


async def test_pause_refuses_new_jobs_and_holds_queued_ones_until_resumed(
    sqlite_store: Store, start_queue, tiny_registry, hooks
) -> None:
    queue, rec = await start_queue(sqlite_store)
    gate = hooks(Gate())
    head = await queue.submit(make_job(tiny_registry, "zed"))
    await gate.wait_entered()
    dave = await queue.submit(make_job(tiny_registry, "dave"))

    await queue.pause(by="mod")
    with pytest.raises(QueuePaused):
        await queue.submit(make_job(tiny_registry, "erin"))
    assert queue.snapshot().paused
    gate.opened.set()
    # the queue wakes its dispatcher for the freed worker before it tells listeners the job
    # finished, and a dispatcher that ignored the pause would take dave's job off the order at once
    await rec.finished(head.job.id)
    assert queue.position(dave.job.id) == 1  # nothing starts
    assert rec.started == [head.job.id]
    await queue.resume(by="mod")
    assert (await rec.finished(dave.job.id)).state is JobState.COMPLETE


async def test_pause_survives_a_restart(sqlite_store: Store, start_queue) -> None:
    queue, _ = await start_queue(sqlite_store)
    await queue.pause(by="mod")
    await queue.stop()
    again, _ = await start_queue(sqlite_store)
    assert again.paused


async def test_timeout_stops_the_job_at_the_next_step_and_the_worker_goes_on(
    sqlite_store: Store, start_queue, tiny_registry, isolated_pipeline_manager: PipelineManager, hooks
) -> None:
    slow = {"on": True}
    steps: list[int] = []

    def crawl(info: StepInfo) -> None:
        if slow["on"]:
            steps.append(1)
            time.sleep(0.05)

    hooks(crawl, isolated_pipeline_manager)
    queue, rec = await start_queue(sqlite_store, manager=isolated_pipeline_manager, job_timeout_s=0.5)
    long = await queue.submit(make_job(tiny_registry, "alice", steps=40))
    ended = await rec.finished(long.job.id)
    assert ended.state is JobState.FAILED
    assert "time limit" in (ended.error or "")
    # stopped at a step, far from the end: 40 steps at 50 ms each would take 2 s
    assert len(steps) < 30, len(steps)
    slow["on"] = False
    nxt = await queue.submit(make_job(tiny_registry, "bob"))
    assert (await rec.finished(nxt.job.id)).state is JobState.COMPLETE


async def test_a_hung_step_fails_the_job_and_a_fresh_worker_thread_takes_over(
    sqlite_store: Store,
    start_queue,
    tiny_registry,
    tiny_settings: GenerationSettings,
    isolated_pipeline_manager: PipelineManager,
    hooks,
) -> None:
    gate = hooks(Gate(), isolated_pipeline_manager)  # never opened until teardown: a hung step
    queue, rec = await start_queue(
        sqlite_store,
        manager=isolated_pipeline_manager,
        manager_factory=lambda: PipelineManager(tiny_settings, tiny_registry),
        step_watchdog_s=0.5,
    )
    stuck = await queue.submit(make_job(tiny_registry, "alice"))
    ended = await rec.finished(stuck.job.id)
    assert ended.state is JobState.FAILED and "stopped responding" in (ended.error or "")
    # failed while its first step was still hung: the watchdog, not the end of the run, ended it
    assert gate.entered.is_set() and not gate.opened.is_set()
    nxt = await queue.submit(make_job(tiny_registry, "bob"))
    assert (await rec.finished(nxt.job.id)).state is JobState.COMPLETE
    (worker,) = queue.workers()
    assert worker.restarts == 1 and worker.alive


async def test_cuda_oom_retries_in_a_leaner_memory_mode_and_the_worker_survives(
    sqlite_store: Store, start_queue, tiny_registry, isolated_pipeline_manager: PipelineManager, hooks
) -> None:
    manager = isolated_pipeline_manager
    budget = {"ooms": 1}

    def oom(info: StepInfo) -> None:
        if budget["ooms"] > 0:
            budget["ooms"] -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    hooks(oom, manager)
    queue, rec = await start_queue(sqlite_store, manager=manager)
    assert manager.memory_mode("tiny-video") == "full"
    once = await queue.submit(make_job(tiny_registry, "alice"))
    done = await rec.finished(once.job.id)
    assert done.state is JobState.COMPLETE
    assert done.timings.get("oom_retries") == 1
    assert manager.memory_mode("tiny-video") == "offload"

    budget["ooms"] = 100  # out of memory whatever we do
    hopeless = await queue.submit(make_job(tiny_registry, "bob"))
    failed = await rec.finished(hopeless.job.id)
    assert failed.state is JobState.FAILED and "ran out of memory" in (failed.error or "")
    assert manager.memory_mode("tiny-video") == "sequential_lowvae"

    budget["ooms"] = 0
    after = await queue.submit(make_job(tiny_registry, "carol"))
    assert (await rec.finished(after.job.id)).state is JobState.COMPLETE


async def test_out_of_time_while_retrying_after_an_oom_names_the_memory_and_what_to_try(
    sqlite_store: Store, start_queue, tiny_registry, isolated_pipeline_manager: PipelineManager, hooks
) -> None:
    ooms = {"left": 1}

    def oom_then_crawl(info: StepInfo) -> None:
        if ooms["left"] > 0:
            ooms["left"] -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        time.sleep(0.05)  # the leaner mode is slow: 40 steps take 2 s, past the 0.5 s limit

    hooks(oom_then_crawl, isolated_pipeline_manager)
    queue, rec = await start_queue(sqlite_store, manager=isolated_pipeline_manager, job_timeout_s=0.5)
    job = await queue.submit(make_job(tiny_registry, "alice", steps=40))
    ended = await rec.finished(job.job.id)
    assert ended.state is JobState.FAILED and ended.timings.get("oom_retries") == 1
    error = ended.error or ""
    assert "ran out of memory" in error and "time limit" in error and "Try a smaller size" in error, error


async def test_restart_recovers_orphans_and_redelivers_only_undelivered_results(
    sqlite_store: Store, start_queue, tiny_registry
) -> None:
    store = sqlite_store
    now = utcnow()
    # a job whose worker died a moment ago (dead pid on this host, lease not yet expired)
    dead = make_job(tiny_registry, "alice")
    await store.insert_job(dead)
    await store.claim_job(
        dead.id,
        owner=f"{socket.gethostname()}:999999:x",
        lease_expires_at=now + timedelta(minutes=5),
        now=now,
    )
    # one that already used its tries
    spent = make_job(tiny_registry, "bob")
    await store.insert_job(spent)
    for _ in range(2):
        await store.claim_job(
            spent.id, owner="elsewhere:1:y", lease_expires_at=now - timedelta(seconds=1), now=now
        )
        await store.requeue_job(spent.id, owner=None)
    await store.claim_job(
        spent.id, owner="elsewhere:1:y", lease_expires_at=now - timedelta(seconds=1), now=now
    )
    # one running on another machine with a live lease: not ours to touch
    remote = make_job(tiny_registry, "carol")
    await store.insert_job(remote)
    await store.claim_job(
        remote.id, owner="otherhost:42:z", lease_expires_at=now + timedelta(minutes=5), now=now
    )

    # and a job that was queued before it all happened
    waiting = make_job(tiny_registry, "zoe")
    waiting.created_at = now - timedelta(hours=1)
    await store.insert_job(waiting)

    queue, rec = await start_queue(store)
    recovered = await rec.finished(dead.id)
    assert recovered.state is JobState.COMPLETE and recovered.attempts == 2
    await rec.finished(waiting.id)
    assert rec.started[:2] == [dead.id, waiting.id]  # the re-queued job went to the front
    gave_up = await rec.finished(spent.id)
    assert gave_up.state is JobState.FAILED and "stopped" in (gave_up.error or "")
    still = await store.get_job(remote.id)
    assert still is not None and still.state is JobState.IN_PROGRESS
    assert queue.position(remote.id) is None
    await queue.stop()

    # the result of `dead` was never marked delivered: the next start offers it once more
    again, rec2 = await start_queue(store)
    await wait_for(lambda: dead.id in rec2.results)
    ((_, result),) = rec2.results[dead.id]
    assert result is not None and result.media_type == "video/mp4"
    assert await asyncio.to_thread(Path(result.path).exists)
    assert result.poster_path and await asyncio.to_thread(Path(result.poster_path).exists)
    await again.mark_delivered(dead.id, "123456")
    await again.stop()

    third, rec3 = await start_queue(store)
    await third.stop()  # start() makes its offers before it returns; stop() hands listeners all it emitted
    # the offers were made and heard: the result never marked delivered is offered again, dead's is not
    assert set(rec3.results) == {waiting.id}
    assert (await store.get_job(dead.id)).result_message_id == "123456"  # type: ignore[union-attr]
    assert cost_key(dead.params)[0] == "tiny-video"


async def test_progress_reaches_listeners_with_previews_and_is_throttled(
    sqlite_store: Store, start_queue, tiny_registry
) -> None:
    queue, rec = await start_queue(sqlite_store)
    fast = await queue.submit(make_job(tiny_registry, "alice", kind="image", steps=6))
    done = await rec.finished(fast.job.id)
    assert done.state is JobState.COMPLETE and done.result_path.endswith(".png")  # type: ignore[union-attr]
    steps = [s for j, s, _, _ in rec.progress if j == fast.job.id]
    assert steps == sorted(steps) and steps and steps[-1] <= 6
    assert any(p is not None and p.startswith(b"\x89PNG") for _, _, _, p in rec.progress)
    kinds = [k for k, j in rec.events if j == fast.job.id]
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "finished"
    await queue.stop()

    throttled, rec2 = await start_queue(sqlite_store, progress_edit_interval_s=60.0)
    job = await throttled.submit(make_job(tiny_registry, "bob", steps=10))
    await rec2.finished(job.job.id)
    assert len([1 for j, *_ in rec2.progress if j == job.job.id]) == 1


async def test_the_next_job_is_claimed_during_the_decode_and_can_still_be_cancelled(
    sqlite_store: Store, start_queue, tiny_registry, isolated_pipeline_manager: PipelineManager
) -> None:
    manager = isolated_pipeline_manager
    decode = threading.Event()
    held = threading.Event()
    real_run = manager.run

    def slow_decode_run(request, **kwargs):  # type: ignore[no-untyped-def]
        output = real_run(request, **kwargs)
        if not held.is_set():  # the first job: pretend its VAE decode takes a while
            held.set()
            decode.wait(20)
        return output

    manager.run = slow_decode_run  # type: ignore[method-assign]
    try:
        queue, rec = await start_queue(sqlite_store, manager=manager)
        first = await queue.submit(make_job(tiny_registry, "alice"))
        second = await queue.submit(make_job(tiny_registry, "bob"))
        third = await queue.submit(make_job(tiny_registry, "carol"))
        assert await asyncio.to_thread(held.wait, 20)
        # the first job did its last step: the next one was claimed while it decodes
        await wait_for(lambda: queue.position(second.job.id) == 0)
        snap = queue.snapshot()
        assert snap.running[0].job.id == first.job.id  # the longest-running first
        phases = {e.job.id: e.phase for e in snap.running}
        assert phases == {first.job.id: "running", second.job.id: "starting"}
        assert [e.job.id for e in snap.queued] == [third.job.id]
        # the third waits for what is left of the first and all of the claimed-ahead second
        assert snap.queued[0].eta_s >= (queue.remaining_s(second.job.id) or 0.0) > 0
        stored = await sqlite_store.get_job(second.job.id)
        assert stored is not None and stored.state is JobState.IN_PROGRESS

        cancelling = await queue.cancel(second.job.id, by_user_id="bob")
        assert cancelling.cancel_requested
        decode.set()
        assert (await rec.finished(first.job.id)).state is JobState.COMPLETE
        ended = await rec.finished(second.job.id)
        assert ended.state is JobState.CANCELLED and ended.gpu_seconds == 0
        assert (await rec.finished(third.job.id)).state is JobState.COMPLETE
        assert second.job.id not in rec.started
    finally:
        decode.set()
        del manager.run


async def test_leases_are_renewed_while_a_job_runs(
    sqlite_store: Store, start_queue, tiny_registry, hooks
) -> None:
    queue, rec = await start_queue(sqlite_store, lease_s=0.3)
    gate = hooks(Gate())
    job = await queue.submit(make_job(tiny_registry, "alice"))
    await gate.wait_entered()
    first = await sqlite_store.get_job(job.job.id)
    assert first is not None and first.lease_owner == queue.owner_id and first.lease_expires_at is not None
    # until the first lease has run out and two renewals were stored meanwhile
    leases = {first.lease_expires_at}
    async with asyncio.timeout(10):
        while len(leases) < 3 or utcnow() <= first.lease_expires_at:
            current = await sqlite_store.get_job(job.job.id)
            assert current is not None and current.state is JobState.IN_PROGRESS
            leases.add(current.lease_expires_at)  # type: ignore[arg-type]
            await asyncio.sleep(0.02)
    held = await sqlite_store.get_job(job.job.id)
    assert held is not None and held.state is JobState.IN_PROGRESS and held.lease_owner == queue.owner_id
    assert held.lease_expires_at is not None and held.lease_expires_at > utcnow()
    assert held.lease_expires_at > first.lease_expires_at  # type: ignore[operator]
    gate.opened.set()
    done = await rec.finished(job.job.id)
    assert done.state is JobState.COMPLETE and done.attempts == 1


async def test_offers_older_than_the_redelivery_window_are_forgotten(
    sqlite_store: Store,
    tiny_settings: GenerationSettings,
    tiny_registry: dict[str, ModelSpec],
    tmp_path: Path,
) -> None:
    """What the queue remembers having offered stays bounded on a bot that runs for months."""
    now = [utcnow()]
    settings = queue_settings(tiny_settings, tmp_path)
    queue = JobQueue(
        settings=settings,
        store=sqlite_store,
        executor=InProcessExecutor(settings=settings, manager_factory=lambda: None),  # type: ignore[arg-type,return-value]
        clock=lambda: now[0],
    )
    jobs = [make_job(tiny_registry, "alice") for _ in range(3)]
    for job in jobs:
        await sqlite_store.insert_job(job)
    await queue.mark_delivered(jobs[0].id, "1")
    await queue.mark_delivered(jobs[1].id, "2")
    assert list(queue.redelivery.offered) == [jobs[0].id, jobs[1].id]
    now[0] += REDELIVER_WINDOW + timedelta(seconds=1)
    await queue.mark_delivered(jobs[2].id, "3")
    assert list(queue.redelivery.offered) == [jobs[2].id]
