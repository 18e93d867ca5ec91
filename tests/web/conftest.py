"""Fixtures for the web server: settings on a temp dir, a real SQLite store, test clients.

`stub_queue` is a small in-memory stand-in used only by tests about HTTP concerns (auth,
error shapes, ranges, escaping); everything about jobs actually running uses the real
queue and worker on the tiny models (see test_api_real.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bot.core.jobs import Job, JobState, Source, utcnow
from bot.core.queue import QueueEntry, QueueSnapshot, RunningEntry
from bot.core.store import Store, create_store
from bot.settings import Settings
from bot.web import create_web_app
from generation.models import build_registry
from tests.conftest import make_tiny_settings

log = logging.getLogger(__name__)

API_KEYS = {
    "alice": "alice-key-0123456789abcdef",
    "bob": "bob-key-0123456789abcdef",
}
LINK_SECRET = "test-link-secret-0123456789abcdef"


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEYS[name]}"}


def make_web_settings(tmp_path: Path, cache_dir: Path, **overrides: Any) -> Settings:
    base = make_tiny_settings(cache_dir).model_dump()
    values: dict[str, Any] = {
        **base,
        "store_url": f"sqlite:///{tmp_path / 'bot.db'}",
        "results_dir": str(tmp_path / "results"),
        "api_keys": API_KEYS,
        "link_secret": LINK_SECRET,
        "public_url": "http://127.0.0.1:8080",
        "discord_token": None,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.fixture
def web_settings(tmp_path: Path, tiny_model_cache: Path) -> Settings:
    return make_web_settings(tmp_path, tiny_model_cache)


@pytest.fixture
async def store(web_settings: Settings) -> AsyncIterator[Store]:
    s = create_store(web_settings)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def real_queue(web_settings: Settings, store: Store, pipeline_manager: Any) -> AsyncIterator[Any]:
    """The real JobQueue with the in-process GPU worker on the session's tiny pipelines, started."""
    from bot.core.inprocess import InProcessExecutor
    from bot.core.queue import JobQueue

    queue = JobQueue(
        settings=web_settings,
        store=store,
        executor=InProcessExecutor(settings=web_settings, manager=pipeline_manager),
    )
    await queue.start()
    yield queue
    await queue.stop(graceful=False, timeout_s=10)


@dataclass
class Submitted:
    job: Job
    position: int
    eta_s: float | None


@dataclass
class StubQueue:
    """Persists submitted jobs in the real store and reports positions; runs nothing."""

    store: Store
    queued: list[Job] = field(default_factory=list)
    running: list[RunningEntry] = field(default_factory=list)
    paused: bool = False
    listeners: list[Any] = field(default_factory=list)
    submit_error: Exception | None = None

    async def submit(self, job: Job) -> Submitted:
        if self.submit_error is not None:
            raise self.submit_error
        await self.store.insert_job(job)
        self.queued.append(job)
        return Submitted(job=job, position=len(self.queued), eta_s=2.0 * len(self.queued))

    async def cancel(self, job_id: str, *, by_user_id: str, is_admin: bool) -> Job:
        self.queued = [j for j in self.queued if j.id != job_id]
        job = await self.store.finish_job(job_id, owner=None, state=JobState.CANCELLED, finished_at=utcnow())
        assert job is not None
        return job

    def run(self, job: Job, step: int, total: int) -> None:
        """Show `job` on a GPU worker at `step` of `total`."""
        self.queued = [j for j in self.queued if j.id != job.id]
        job.state = JobState.IN_PROGRESS
        self.running.append(
            RunningEntry(job=job, step=step, total=total, elapsed_s=1.0, remaining_s=1.0, worker_id="w0")
        )

    def position(self, job_id: str) -> int | None:
        if any(e.job.id == job_id for e in self.running):
            return 0
        for i, job in enumerate(self.queued, start=1):
            if job.id == job_id:
                return i
        return None

    def eta_s(self, job_id: str) -> float | None:
        pos = self.position(job_id)
        return None if pos is None else 2.0 * (pos + 1)

    def snapshot(self) -> QueueSnapshot:
        entries = [
            QueueEntry(job=job, position=i, eta_s=2.0 * i, run_s=2.0) for i, job in enumerate(self.queued, 1)
        ]
        return QueueSnapshot(running=list(self.running), queued=entries, paused=self.paused, counts={})

    def add_listener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def remove_listener(self, listener: Any) -> None:
        self.listeners.remove(listener)


@pytest.fixture
def stub_queue(store: Store) -> StubQueue:
    return StubQueue(store=store)


ClientFactory = Callable[..., Any]


@pytest.fixture
async def make_client(web_settings: Settings, store: Store) -> AsyncIterator[ClientFactory]:
    """Build an app around (store, queue) and return a started aiohttp test client."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def factory(queue: Any, **kwargs: Any) -> TestClient[web.Request, web.Application]:
        settings = kwargs.pop("settings", web_settings)
        app = create_web_app(
            settings=settings,
            store=kwargs.pop("store", store),
            queue=queue,
            registry=build_registry(settings),
            **kwargs,
        )
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


def make_job(
    *,
    kind: str = "image",
    user_id: str = "api:alice",
    source: Source = Source.API,
    guild_id: str | None = None,
    prompt: str = "a lighthouse at dusk",
    state: JobState = JobState.COMPLETE,
    result_path: Path | None = None,
    width: int = 64,
    height: int = 64,
) -> Job:
    params: dict[str, Any] = {
        "kind": kind,
        "model": f"tiny-{kind}",
        "prompt": prompt,
        "negative_prompt": None,
        "seed": 7,
        "steps": 2,
        "guidance": 7.5,
        "width": width,
        "height": height,
    }
    if kind == "video":
        params.update(frames=8, fps=8)
    return Job(
        kind=kind,
        model=f"tiny-{kind}",
        prompt=prompt,
        params=params,
        user_id=user_id,
        user_name=user_id.removeprefix("api:"),
        source=source,
        guild_id=guild_id,
        seed=7,
        state=state,
        result_path=str(result_path) if result_path else None,
        result_bytes=result_path.stat().st_size if result_path else None,
        finished_at=utcnow() if state.is_final else None,
    )


def write_test_mp4(path: Path, *, width: int = 64, height: int = 48, frames: int = 24, fps: int = 8) -> Path:
    """An H.264 MP4 from the project's own encoder (moving gradient, so frames differ)."""
    from generation.media import encode_mp4

    ys, xs = np.mgrid[0:height, 0:width]
    clip = [
        np.stack([(xs * 4 + i * 9) % 256, (ys * 5) % 256, np.full_like(xs, (i * 23) % 256)], axis=-1).astype(
            np.uint8
        )
        for i in range(frames)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_mp4(clip, fps=fps))
    return path


def write_test_png(path: Path, *, width: int = 64, height: int = 64) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (200, 40, 90)).save(path)
    return path
