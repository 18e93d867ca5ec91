"""The database goes away under load and comes back: nothing a member did is lost.

While the store cannot be written, the job on the GPU finishes and is delivered, its
request-log writes wait in `BufferedStore` and land when the store is back; a new request
is refused with a message saying it was not queued (never "queued" and then lost); jobs
that were waiting start again by themselves once the store answers.

The outage lasts `RELIABILITY_OUTAGE_S` seconds (8 here by default, to keep the suite fast;
`RELIABILITY_OUTAGE_S=60` runs the issue's full minute). The Mongo leg runs over mongomock
with a fault injector, and over a real server behind a cuttable TCP proxy when
`MONGODB_TEST_URI` is set.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from bot.core.inprocess import InProcessExecutor
from bot.core.jobs import Job, JobState
from bot.core.queue import JobQueue
from bot.core.store.base import Store, StoreUnavailable
from bot.core.store.buffer import BufferedStore
from bot.core.store.mongo import MongoStore, make_client
from bot.core.store.testing import mongomock_store
from bot.services import running_services
from generation.models import ModelSpec
from generation.pipelines import PipelineManager
from generation.settings import GenerationSettings
from tests.bot.test_e2e import TINY, TINY_VIDEO, private_reply, queue_job, result_message, status_message
from tests.queue.conftest import Recorder, make_job, queue_settings
from tests.reliability.conftest import deployment, read_jobs, results_for, wait_for
from tests.reliability.faults import MongoOutage, SQLiteLock, TcpCut

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

OUTAGE_S = float(os.environ.get("RELIABILITY_OUTAGE_S", "8"))
#: the in-process Mongo story is cheaper to keep short unless a long outage was asked for
MOCK_OUTAGE_S = OUTAGE_S if "RELIABILITY_OUTAGE_S" in os.environ else 3.0
API_KEY = "outage-test-key-0123456789"
MONGODB_TEST_URI = os.environ.get("MONGODB_TEST_URI", "").strip()
STEP = re.compile(r"step (\d+)/")


async def buffered_size(web_url: str) -> tuple[float, float]:
    """(write buffer size, dropped) as /metrics reports them."""
    async with aiohttp.ClientSession() as http, http.get(f"{web_url}/metrics") as response:
        text = await response.text()
    size = re.search(r"^imagine_store_write_buffer_size (\S+)$", text, re.M)
    dropped = re.search(r"^imagine_store_write_buffer_dropped (\S+)$", text, re.M)
    assert size and dropped, text[-1500:]
    return float(size.group(1)), float(dropped.group(1))


async def test_sqlite_locked_under_load_buffers_the_log_refuses_new_jobs_clearly_and_loses_nothing(
    workdir: Path, tiny_model_cache: Path
) -> None:
    env = {"API_KEYS": json.dumps({"outage": API_KEY})}
    async with deployment(workdir, tiny_model_cache, env=env) as bot:
        running = await queue_job(
            bot,
            "video",
            {"prompt": "through the outage", **TINY_VIDEO, "steps": 40, "frames": 32},
            user="alice",
        )
        waiting = [
            await queue_job(
                bot, "imagine", {"prompt": f"waiting {i}", **TINY}, user=("bob", "carol", "dave")[i % 3]
            )
            for i in range(6)
        ]
        status = status_message(bot, running)
        await bot.discord.wait_until(lambda: STEP.search(status.content), timeout=60, what="the job to start")

        t_lock = time.monotonic()
        async with SQLiteLock(bot.db_path):

            async def deliver() -> float:
                # the job on the GPU finishes and reaches its channel although nothing can be written
                delivered = await result_message(bot, running, timeout=90)
                assert delivered.attachment is not None
                return time.monotonic() - t_lock

            async def refuse_member() -> float:
                interaction = await bot.discord.invoke_slash(
                    "imagine", {"prompt": "in the outage", **TINY}, user=bot.members["erin"], guild=bot.art
                )
                refused = await private_reply(interaction, timeout=90)
                text = refused.content
                assert "not queued" in text and "try again" in text.lower(), text
                return time.monotonic() - t_lock

            async def refuse_api() -> float:
                async with (
                    aiohttp.ClientSession() as http,
                    http.post(
                        f"{bot.web_url}/api/v1/images",
                        json={"prompt": "api during the outage", "steps": 2, "width": 64, "height": 64},
                        headers={"Authorization": f"Bearer {API_KEY}"},
                    ) as response,
                ):
                    body = await response.json()
                assert response.status == 503 and body["error"]["code"] == "store_unavailable", body
                assert "not queued" in body["error"]["message"]
                return time.monotonic() - t_lock

            # new requests are refused, saying they were not queued, while the running job is delivered
            delivered_s, refused_s, api_s = await asyncio.gather(deliver(), refuse_member(), refuse_api())
            size, dropped = await buffered_size(bot.web_url)
            assert size >= 1 and dropped == 0  # its finish and delivery records wait in memory
            # nothing else starts while a start cannot be recorded
            assert not any(results_for(bot.discord, s) for s in waiting)
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t_lock)))
        outage_s = time.monotonic() - t_lock

        t_back = time.monotonic()
        for short in waiting:
            await result_message(bot, short, timeout=120)
        recovered_s = time.monotonic() - t_back

        async def drained() -> bool:
            return await buffered_size(bot.web_url) == (0.0, 0.0)

        await wait_for(drained, timeout=30, what="the write buffer to drain with nothing dropped")
        rc, _ = await bot.terminate()
        assert rc == 0

    jobs = await read_jobs(bot.db_path)
    by_short = {job.id[:8]: job for job in jobs.values()}
    assert set(by_short) == {running, *waiting}  # the refused requests were never logged as queued
    for short, job in by_short.items():
        assert job.state is JobState.COMPLETE, (short, job.state)
        assert job.result_message_id == str(results_for(bot.discord, short)[0].id)
        assert job.gpu_seconds and job.finished_at and job.attempts == 1
        assert len(results_for(bot.discord, short)) == 1
    log.info(
        "SQLite locked %.1f s: running job delivered %.1f s in, member refused %.1f s in, API 503 %.1f s in; "
        "6 waiting jobs delivered %.1f s after the lock was released",
        outage_s,
        delivered_s,
        refused_s,
        api_s,
        recovered_s,
    )


# -- MongoDB --------------------------------------------------------------------------------------


class Deliverer(Recorder):
    """Records events and, like the Discord delivery, marks complete jobs as posted."""

    def __init__(self, queue: JobQueue) -> None:
        super().__init__()
        self.queue = queue

    async def on_finished(self, job: Job, result: object) -> None:
        if job.state is JobState.COMPLETE:
            await self.queue.mark_delivered(job.id, f"message-{job.id[:8]}")
        await super().on_finished(job, result)  # type: ignore[arg-type]


async def outage_story(
    store: Store,
    cut: Callable[[], None],
    restore: Callable[[], None],
    *,
    settings_dir: Path,
    tiny_settings: GenerationSettings,
    tiny_registry: dict[str, ModelSpec],
    manager: PipelineManager,
    outage_s: float,
) -> None:
    """Jobs from four members; the database goes away while the first runs, and comes back."""
    settings = queue_settings(tiny_settings, settings_dir, max_queued_per_user=20)
    buffered = BufferedStore(store, max_items=1000, flush_interval_s=0.2)
    executor = InProcessExecutor(settings=settings, manager=manager)
    async with running_services(settings, executor=executor, store=buffered) as services:
        queue = services.queue
        rec = Deliverer(queue)
        queue.add_listener(rec)
        first = await queue.submit(make_job(tiny_registry, "alice", steps=30, frames=16))
        rest = [
            await queue.submit(make_job(tiny_registry, ("bob", "carol", "dave")[i % 3], prompt=f"job {i}"))
            for i in range(6)
        ]
        await wait_for(
            lambda: first.job.id in rec.started, timeout=60, what="the first job to start", every=0.01
        )
        cut()
        t0 = time.monotonic()
        done = await rec.finished(first.job.id, within_s=60)  # the GPU finishes what it had
        assert done.state is JobState.COMPLETE
        with pytest.raises(StoreUnavailable) as refused:
            await queue.submit(make_job(tiny_registry, "erin", prompt="during the outage"))
        assert "try again" in refused.value.message.lower()
        assert buffered.buffer_size >= 1 and rest[0].job.id not in rec.started
        await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - t0)))
        restore()
        for submitted in rest:
            assert (await rec.finished(submitted.job.id, within_s=60)).state is JobState.COMPLETE
        await wait_for(lambda: not buffered.buffer_size, timeout=30, what="the buffer to drain")
        assert buffered.buffer_size == 0 and buffered.dropped == 0 and buffered.flushed >= 1
        ids = [first.job.id, *(s.job.id for s in rest)]
        for job_id in ids:
            job = await buffered.get_job(job_id)
            assert job is not None and job.state is JobState.COMPLETE, job
            assert job.result_message_id == f"message-{job_id[:8]}" and job.gpu_seconds
            assert len(rec.results[job_id]) == 1  # finished (and delivered) once
        usage = sum([(await buffered.get_user(u)).jobs_total for u in ("alice", "bob", "carol", "dave")])
        assert usage == 7  # every job's usage was counted, the buffered one included
        assert (await buffered.get_user("erin")).jobs_total == 0


async def test_mongo_outage_under_load_via_mongomock_fault_injector(
    tmp_path: Path,
    tiny_settings: GenerationSettings,
    tiny_registry: dict[str, ModelSpec],
    pipeline_manager: PipelineManager,
) -> None:
    store = mongomock_store()
    outage = MongoOutage(store)

    def cut() -> None:
        outage.down = True

    def restore() -> None:
        outage.down = False

    await outage_story(
        store,
        cut,
        restore,
        settings_dir=tmp_path,
        tiny_settings=tiny_settings,
        tiny_registry=tiny_registry,
        manager=pipeline_manager,
        outage_s=MOCK_OUTAGE_S,
    )
    assert outage.refused > 0


@pytest.mark.real_mongodb
@pytest.mark.skipif(not MONGODB_TEST_URI, reason="MONGODB_TEST_URI is not set: no real MongoDB to cut off")
async def test_real_mongodb_cut_off_by_the_network_under_load(
    tmp_path: Path,
    tiny_settings: GenerationSettings,
    tiny_registry: dict[str, ModelSpec],
    pipeline_manager: PipelineManager,
) -> None:
    target = urlsplit(MONGODB_TEST_URI)
    proxy = await TcpCut((target.hostname or "127.0.0.1", target.port or 27017)).start()
    db_name = f"imaginebot_outage_{os.getpid()}"
    url = (
        f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true&serverSelectionTimeoutMS=1500"
        "&connectTimeoutMS=1000&socketTimeoutMS=3000"
    )
    store = MongoStore(client_factory=lambda: make_client(url), db_name=db_name, write_concern=1)
    try:
        await outage_story(
            store,
            proxy.cut,
            proxy.restore,
            settings_dir=tmp_path,
            tiny_settings=tiny_settings,
            tiny_registry=tiny_registry,
            manager=pipeline_manager,
            outage_s=OUTAGE_S,
        )
    finally:
        await proxy.close()
        cleanup = make_client(MONGODB_TEST_URI)
        await cleanup.drop_database(db_name)
        cleanup.close()
