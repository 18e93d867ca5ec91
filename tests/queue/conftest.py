"""Queue fixtures: a real store (SQLite file, or the Mongo driver over mongomock), settings for the
tiny twins, and a factory that starts a JobQueue with the in-process executor and stops it after.

`Recorder` is a listener that keeps every event and lets a test await "job X finished".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from bot.core.inprocess import InProcessExecutor
from bot.core.jobs import Job, JobState, Source
from bot.core.queue import BaseJobListener, JobQueue, JobResult
from bot.core.store.base import Store
from bot.core.store.sqlite import SQLiteStore
from bot.settings import Settings
from generation.models import ModelSpec, get_spec
from generation.params import validate_request
from generation.pipelines import PipelineManager
from generation.settings import GenerationSettings

log = logging.getLogger(__name__)


def queue_settings(tiny: GenerationSettings, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        **tiny.model_dump(),
        "results_dir": str(tmp_path / "results"),
        "store_url": f"sqlite:///{tmp_path / 'bot.db'}",
        "progress_edit_interval_s": 0.0,
        "lease_s": 30.0,
        "max_queue": 100,
        "max_queued_per_user": 50,
        "daily_gpu_seconds_per_user": 0.0,
        "job_timeout_s": 60.0,
        "step_watchdog_s": 30.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def make_job(
    registry: dict[str, ModelSpec],
    user: str,
    *,
    kind: str = "video",
    prompt: str = "a lighthouse in a storm",
    priority: int = 0,
    **raw: Any,
) -> Job:
    model = "tiny-video" if kind == "video" else "tiny-image"
    spec = get_spec(registry, model)
    raw.setdefault("seed", 7)
    raw.setdefault("steps", 2)
    raw.setdefault("width", 32)
    raw.setdefault("height", 32)
    if kind == "video":
        raw.setdefault("frames", 2)
    request = validate_request(kind, {"prompt": prompt, **raw}, spec)
    return Job(
        kind=kind,
        model=model,
        prompt=request.prompt,
        params=request.to_dict(),
        user_id=user,
        user_name=user.title(),
        source=Source.DISCORD,
        guild_id="g1",
        channel_id="c1",
        seed=request.seed,
        priority=priority,
    )


class Recorder(BaseJobListener):
    """Keeps every event; `await finished(job_id)` waits for a job's end."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.started: list[str] = []
        self.progress: list[tuple[str, int, int, bytes | None]] = []
        self.results: dict[str, list[tuple[Job, JobResult | None]]] = {}
        self._waiters: dict[str, asyncio.Future[Job]] = {}

    async def on_queued(self, job: Job) -> None:
        self.events.append(("queued", job.id))

    async def on_started(self, job: Job) -> None:
        self.events.append(("started", job.id))
        self.started.append(job.id)

    async def on_progress(self, job: Job, step: int, total: int, preview_png: bytes | None) -> None:
        self.events.append(("progress", job.id))
        self.progress.append((job.id, step, total, preview_png))

    async def on_finished(self, job: Job, result: JobResult | None) -> None:
        self.events.append(("finished", job.id))
        self.results.setdefault(job.id, []).append((job, result))
        waiter = self._future(job.id)
        if not waiter.done():
            waiter.set_result(job)

    def _future(self, job_id: str) -> asyncio.Future[Job]:
        if job_id not in self._waiters:
            self._waiters[job_id] = asyncio.get_running_loop().create_future()
        return self._waiters[job_id]

    async def finished(self, job_id: str, within_s: float = 30.0) -> Job:
        return await asyncio.wait_for(asyncio.shield(self._future(job_id)), within_s)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core box, two OpenMP threads fighting other processes make
    a 0.1 s tiny job take seconds (measured); the queue's tests are about order, not speed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = SQLiteStore(path=tmp_path / "bot.db")
    await store.open()
    yield store
    await store.close()


QueueFactory = Callable[..., Any]


@pytest.fixture
async def start_queue(
    tiny_settings: GenerationSettings,
    tiny_registry: dict[str, ModelSpec],
    pipeline_manager: PipelineManager,
    tmp_path: Path,
) -> AsyncIterator[QueueFactory]:
    """`await start_queue(store, manager=None, **settings)` -> (queue, recorder); stopped afterwards."""
    started: list[JobQueue] = []

    async def factory(
        store: Store,
        *,
        manager: PipelineManager | None = None,
        manager_factory: Callable[[], PipelineManager] | None = None,
        **overrides: Any,
    ) -> tuple[JobQueue, Recorder]:
        settings = queue_settings(tiny_settings, tmp_path, **overrides)
        if manager is None and manager_factory is None:
            manager = pipeline_manager
        executor = InProcessExecutor(settings=settings, manager=manager, manager_factory=manager_factory)
        queue = JobQueue(settings=settings, store=store, executor=executor)
        recorder = Recorder()
        queue.add_listener(recorder)
        await queue.start()
        started.append(queue)
        return queue, recorder

    yield factory
    for queue in started:
        await queue.stop(graceful=False, timeout_s=5.0)


async def wait_for(predicate: Callable[[], bool], within_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def is_final(job: Job) -> bool:
    return JobState(job.state).is_final
