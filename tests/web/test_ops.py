"""Operations endpoints: /healthz, /readyz with its reasons, and every /metrics series."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.core import metrics
from bot.core.inprocess import InProcessExecutor
from bot.core.jobs import JobState
from bot.core.queue import JobQueue
from bot.core.store.base import StoreUnavailable
from bot.core.store.buffer import BufferedStore
from tests.web.conftest import auth, make_job

pytestmark = pytest.mark.timeout(90)


async def scrape(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


async def wait_until(check: Callable[[], Awaitable[bool]], *, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# -- health and readiness ------------------------------------------------------------------------


async def test_healthz_answers_without_touching_dependencies(make_client, stub_queue, store) -> None:
    client = await make_client(stub_queue)
    await store.close()  # even with the store gone, the process is up
    resp = await client.get("/healthz")
    assert resp.status == 200 and await resp.json() == {"status": "ok"}


@dataclass
class Worker:
    id: str
    alive: bool


async def test_readyz_lists_every_reason(make_client, stub_queue, store) -> None:
    client = await make_client(stub_queue)
    resp = await client.get("/readyz")  # the stub has no workers() to ask: store only
    assert resp.status == 200 and await resp.json() == {"status": "ready", "reasons": []}

    stub_queue.workers = lambda: [Worker(id="host/gpu", alive=False)]  # type: ignore[attr-defined]
    await store.close()
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "not_ready"
    assert any(r.startswith("store unreachable") for r in body["reasons"])
    assert "GPU worker not alive: host/gpu" in body["reasons"]


@pytest.fixture
async def unstarted_queue(web_settings, store, pipeline_manager) -> AsyncIterator[JobQueue]:
    queue = JobQueue(
        settings=web_settings,
        store=store,
        executor=InProcessExecutor(settings=web_settings, manager=pipeline_manager),
    )
    yield queue
    await queue.stop(graceful=False, timeout_s=10)


async def test_readyz_follows_the_real_queue_and_worker(make_client, unstarted_queue) -> None:
    client = await make_client(unstarted_queue)
    resp = await client.get("/readyz")
    assert resp.status == 503 and "queue not started" in (await resp.json())["reasons"]
    await unstarted_queue.start()
    resp = await client.get("/readyz")
    assert resp.status == 200, await resp.text()
    await unstarted_queue.stop(graceful=False, timeout_s=10)
    resp = await client.get("/readyz")
    assert resp.status == 503


# -- metrics -------------------------------------------------------------------------------------

SERIES = (
    "imagine_queue_depth",
    "imagine_queue_running",
    "imagine_queue_paused",
    "imagine_jobs_finished_total",
    "imagine_queue_wait_seconds_bucket",
    "imagine_gpu_seconds_bucket",
    "imagine_worker_busy_seconds_total",
    "imagine_worker_busy_ratio",
    "imagine_oom_retries_total",
    "imagine_delivery_fallbacks_total",
    "imagine_store_write_buffer_size",
    "imagine_store_write_buffer_dropped",
    "imagine_discord_latency_seconds",
    "imagine_http_requests_total",
    "imagine_api_jobs_submitted_total",
)


async def test_metrics_count_a_real_job_through_the_queue(make_client, unstarted_queue) -> None:
    await unstarted_queue.start()
    client = await make_client(unstarted_queue)
    before = await scrape(client)
    metrics.OOM_RETRIES.labels(model="tiny-image").inc()  # as the worker does after an OOM
    metrics.DELIVERY_FALLBACKS.labels(kind="link").inc()  # as Discord delivery does
    metrics.DISCORD_LATENCY.set(0.042)

    resp = await client.post("/api/v1/images", json={"prompt": "metered", "steps": 2}, headers=auth("alice"))
    job_id = (await resp.json())["id"]

    labels = (("kind", "image"), ("model", "tiny-image"), ("state", "complete"))
    finished = ("imagine_jobs_finished_total", labels)

    async def counted() -> bool:
        # the queue stores the job's end, then counts it: wait for the count, not just the state
        resp = await client.get(f"/api/v1/jobs/{job_id}", headers=auth("alice"))
        if (await resp.json())["state"] != "complete":
            return False
        return (await scrape(client)).get(finished, 0.0) > before.get(finished, 0.0)

    await wait_until(counted, timeout_s=60)
    after = await scrape(client)

    names = {name for name, _ in after}
    for series in SERIES:
        assert series in names, f"{series} missing from /metrics"

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    img = {"model": "tiny-image", "kind": "image"}
    assert delta("imagine_jobs_finished_total", kind="image", model="tiny-image", state="complete") == 1
    assert delta("imagine_queue_wait_seconds_count", **img) == 1
    assert delta("imagine_gpu_seconds_count", **img) == 1
    assert delta("imagine_gpu_seconds_sum", **img) > 0
    assert delta("imagine_worker_busy_seconds_total") > 0
    assert 0 < value(after, "imagine_worker_busy_ratio") <= 1
    assert delta("imagine_oom_retries_total", model="tiny-image") == 1
    assert delta("imagine_delivery_fallbacks_total", kind="link") == 1
    assert value(after, "imagine_discord_latency_seconds") == 0.042
    assert delta("imagine_api_jobs_submitted_total", key="alice", kind="image") == 1
    assert delta("imagine_http_requests_total", route="/api/v1/images", method="POST", status="202") == 1
    assert value(after, "imagine_queue_depth", kind="image") == 0


async def test_queue_depth_by_kind_and_paused(make_client, stub_queue) -> None:
    stub_queue.queued = [make_job(state=JobState.QUEUED) for _ in range(3)] + [
        make_job(kind="video", state=JobState.QUEUED)
    ]
    stub_queue.paused = True
    client = await make_client(stub_queue)
    samples = await scrape(client)
    assert value(samples, "imagine_queue_depth", kind="image") == 3
    assert value(samples, "imagine_queue_depth", kind="video") == 1
    assert value(samples, "imagine_queue_paused") == 1
    assert value(samples, "imagine_queue_running") == 0


async def test_store_write_buffer_size_while_the_database_is_down(
    make_client, stub_queue, store, monkeypatch
) -> None:
    job = make_job(state=JobState.QUEUED)
    await store.insert_job(job)
    buffered = BufferedStore(store, max_items=10, flush_interval_s=0.05)
    await buffered.open()
    try:
        client = await make_client(stub_queue, store=buffered)

        async def down(*args: Any, **kwargs: Any) -> Any:
            raise StoreUnavailable("database unreachable")

        async def ping() -> bool:
            return False

        monkeypatch.setattr(store, "update_job", down)
        monkeypatch.setattr(store, "ping", ping)
        await buffered.update_job(job.id, error="written while down")
        await buffered.update_job(job.id, gpu_seconds=1.5)
        samples = await scrape(client)
        assert value(samples, "imagine_store_write_buffer_size") == 2
        ready = await client.get("/readyz")
        assert ready.status == 503

        monkeypatch.undo()

        async def flushed() -> bool:
            return buffered.buffer_size == 0

        await wait_until(flushed, timeout_s=10)
        assert value(await scrape(client), "imagine_store_write_buffer_size") == 0
        assert (await store.get_job(job.id)).gpu_seconds == 1.5
    finally:
        await buffered.close()


def test_busy_ratio_over_a_sliding_window() -> None:
    now = [1000.0]
    busy = metrics.BusyTracker(window_s=100.0, clock=lambda: now[0])
    now[0] += 100  # 100 s idle
    busy.started("a")
    now[0] += 50
    assert busy.ratio() == pytest.approx(0.5)  # half of the last 100 s, still running
    assert busy.finished("a") == pytest.approx(50)
    now[0] += 75
    assert busy.ratio() == pytest.approx(0.25)  # only its last 25 s are inside the window
    now[0] += 200
    assert busy.ratio() == 0.0
    assert busy.finished("never-started") == 0.0


def test_request_metric_method_label_is_bounded() -> None:
    """Client-chosen method tokens must not mint new series (the pure-Python parser takes any)."""
    from aiohttp.test_utils import make_mocked_request

    from bot.web.errors import _method_name

    assert _method_name(make_mocked_request("POST", "/api/v1/images")) == "POST"
    assert _method_name(make_mocked_request("XYZZY123", "/")) == "other"
